#!/usr/bin/env bash
# The GPU check: the transformers engine on CUDA in bf16 and with bitsandbytes 4-bit (and vLLM when the image has
# it) on the tiny model: chat, an image, streaming and the captions tests; one summary for docs/development.md.
#
# Here, once (needs pip and the package registries; writes the gitignored .gpu-carry/):
#   bash scripts/gpu_check.sh prepare           download the wheels the GPU machine lacks, check what travels
# On the lent machine, through the device tool (run, carry [".gpu-carry"], timeout_s 600):
#   bash scripts/gpu_check.sh run [all|bf16|4bit]
# `all` (the default) fits the device tool's 64 MiB in one run; bf16 and 4bit are there to rerun one half.
# The machine's image: Python 3.12, torch with CUDA 13, transformers, no vLLM, no network (scripts/gpu_image.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: bash scripts/gpu_check.sh prepare | check [all|bf16|4bit] | run [all|bf16|4bit]" >&2
    exit 2
}

part_of() {
    case "${1:-all}" in
        all | bf16 | 4bit) echo "${1:-all}" ;;
        *) usage ;;
    esac
}

# The carry helper needs `packaging`: the test venv has it here, the image's python3 has it there.
HELPER_PYTHON=${PYTHON:-$([ -x .venv-test/bin/python ] && echo .venv-test/bin/python || echo python3)}

case "${1:-}" in
    prepare)
        [ $# -le 1 ] || usage
        "$HELPER_PYTHON" scripts/gpu_carry.py download --part all
        echo "then, with the device tool: run, command 'bash scripts/gpu_check.sh run', carry [\".gpu-carry\"]"
        ;;
    check)
        [ $# -le 2 ] || usage
        "$HELPER_PYTHON" scripts/gpu_carry.py check --part "$(part_of "${2:-}")"
        ;;
    run)
        [ $# -le 2 ] || usage
        part=$(part_of "${2:-}")
        command -v nvidia-smi >/dev/null && nvidia-smi -L
        site=/tmp/gpu-check-site
        mapfile -t wheels < <(python3 scripts/gpu_carry.py paths --part "$part")
        [ ${#wheels[@]} -gt 0 ] || { echo "no carried wheels: run 'gpu_check.sh prepare' first, carry .gpu-carry" >&2; exit 1; }
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
            "${wheels[@]}"
        export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
        python3 -m server.demo_model  # models/tiny-mistral3 of this copy (the tests' tiny_model fixture finds it)
        python3 scripts/gpu_check.py --part "$part"
        ;;
    *) usage ;;
esac
