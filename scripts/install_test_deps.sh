#!/usr/bin/env bash
# Install the Debian packages the test suite drives as real programs, with apt-get (through sudo when not root):
#   chromium      the dashboard tests (tests/ops/test_ops_dashboard.py), driven by Playwright
#   redis-server  the shared-state tests (tests/redis_server.py starts its own on a loopback port)
# Idempotent: installs only what is missing, and does nothing (no apt-get update) when both already run.
# Never runs `playwright install`.
set -euo pipefail

missing=()
if ! { [[ -x /usr/bin/chromium ]] && /usr/bin/chromium --version >/dev/null 2>&1; }; then
    missing+=(chromium)
fi
if ! { command -v redis-server >/dev/null 2>&1 && redis-server --version >/dev/null 2>&1; }; then
    missing+=(redis-server)
fi
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_test_deps.sh: apt-get not found; install ${missing[*]} (/usr/bin/chromium, redis-server on PATH)" >&2
    exit 1
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    SUDO="sudo"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
/usr/bin/chromium --version
redis-server --version
