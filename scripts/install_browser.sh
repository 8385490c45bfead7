#!/usr/bin/env bash
# Install Debian's chromium for the dashboard test (tests/ops/test_ops_dashboard.py), driven by Playwright.
# Idempotent: does nothing when /usr/bin/chromium already runs. Never runs `playwright install`.
set -euo pipefail

if [[ -x /usr/bin/chromium ]] && /usr/bin/chromium --version >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: apt-get not found; install Chromium so that /usr/bin/chromium exists" >&2
    exit 1
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    SUDO="sudo"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium
/usr/bin/chromium --version
