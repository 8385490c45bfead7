#!/usr/bin/env bash
# Build .venv-bench: this project (transformers engine, test tools) plus a pinned LiteLLM and its proxy's
# dependencies, for scripts/bench_gateway.py and tests/bench/ (`make test-bench`). LiteLLM never enters the
# server's own dependencies.
#
#   scripts/bench_env.sh [VENV_DIR]      (default: <repo>/.venv-bench)
#
# Idempotent: a venv stamped with the sha256 of this script, scripts/bench_requirements.txt, pyproject.toml and
# constraints.txt is left as is. Fails (and leaves no stamp) when any .pth file other than setuptools' shim and
# this project's editable install appears in site-packages: a .pth runs code at every interpreter start, which
# is how the compromised LiteLLM releases of 2026 delivered their payload.
#
# Env knobs: PYTHON (interpreter to build the venv with), TORCH (default torch==2.13.0, as the Makefile).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
VENV="${1:-$REPO/.venv-bench}"
REQS="$HERE/bench_requirements.txt"
TORCH="${TORCH:-torch==2.13.0}"
STAMP="$VENV/.bench-env-stamp"

want="$(cat "${BASH_SOURCE[0]}" "$REQS" "$REPO/pyproject.toml" "$REPO/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && -x "$VENV/bin/python" && "$(cat "$STAMP")" == "$want" ]]; then
    echo "bench env: $VENV is up to date"
    exit 0
fi

PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
start=$(date +%s)
echo "bench env: building $VENV with $("$PY" -V 2>&1)"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$REPO/constraints.txt")
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "$TORCH"
"${PIP[@]}" -e "$REPO[hf,dev]"
"${PIP[@]}" -r "$REQS"

# LITELLM_LOCAL_MODEL_COST_MAP: importing litellm would otherwise fetch its price list from the internet.
LITELLM_LOCAL_MODEL_COST_MAP=True "$VENV/bin/python" - "$HERE" <<'EOF'
import sys, sysconfig
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from bench_common import unexpected_pth_files
found = unexpected_pth_files(Path(sysconfig.get_paths()["purelib"]))
if found:
    sys.exit("bench env: REFUSING this venv: unexpected .pth files " + ", ".join(str(p) for p in found))
import litellm  # noqa: F401  (imports: the pinned release is usable)
from importlib.metadata import version
print(f"bench env: ok: litellm {version('litellm')}, no unexpected .pth files")
EOF

echo "$want" > "$STAMP"
echo "bench env: done in $(( $(date +%s) - start ))s; size $(du -sh "$VENV" | cut -f1)"
