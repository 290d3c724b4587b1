#!/usr/bin/env bash
# The one script a GPU host runs to check TensorRT end to end.
#
#   benchmarks/gpu_check.sh KODAK_DIR BUNDLE [BUNDLE ...] [-- gpu_check options]
#
# e.g. benchmarks/gpu_check.sh ~/kodak b32/ b16/ b8/ -- --limit 8
#
# For every bundle (fp32, fp16, int8 as exported by dcae-export): the static
# TensorRT check, then `dcae-export build-engines` (sizes from MIN_SIZE,
# OPT_SIZE, MAX_SIZE; defaults 256x256, 512x768, 2048x2048), then
# dcae_deploy/bench/gpu_check.py: each engine against onnxruntime fp32, Kodak encoded
# and decoded through TensorRT, fp32 bitstreams against the CPU bundle's, all
# timed. Stops at the first failure with a one-line reason; exit status 2 when
# TensorRT, cuda-python or a GPU is missing.
set -euo pipefail

# The repository's packages, whatever the current directory (paths given on
# the command line stay relative to it).
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python}
MIN_SIZE=${MIN_SIZE:-256x256}
OPT_SIZE=${OPT_SIZE:-512x768}
MAX_SIZE=${MAX_SIZE:-2048x2048}

if [ $# -lt 2 ]; then
    echo "usage: $0 KODAK_DIR BUNDLE [BUNDLE ...] [-- gpu_check options]" >&2
    exit 64
fi
kodak=$1
shift
bundles=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    bundles+=("$1")
    shift
done
[ "${1:-}" = "--" ] && shift
if [ ${#bundles[@]} -eq 0 ]; then
    echo "usage: $0 KODAK_DIR BUNDLE [BUNDLE ...] [-- gpu_check options]" >&2
    exit 64
fi
[ -d "$kodak" ] || { echo "gpu_check: error: $kodak is not a directory of images" >&2; exit 64; }

# What is missing, said once, before anything is built.
if ! reason=$("$PYTHON" -c '
import sys
from dcae_deploy.runtime.tensorrt_backend import tensorrt_unavailable_reason
reason = tensorrt_unavailable_reason()
print(reason or "")
sys.exit(1 if reason else 0)'); then
    echo "gpu_check: error: ${reason:-cannot import the runtime}" >&2
    exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

for bundle in "${bundles[@]}"; do
    echo "== $bundle: static check and engine build"
    start=$(date +%s)
    "$PYTHON" -m dcae_deploy.export.cli build-engines "$bundle" \
        --min-size "$MIN_SIZE" --opt-size "$OPT_SIZE" --max-size "$MAX_SIZE" \
        || { echo "gpu_check: error: building engines for $bundle failed" >&2; exit 1; }
    echo "   built in $(( $(date +%s) - start )) s"
done

echo "== engines vs onnxruntime, Kodak through TensorRT"
exec "$PYTHON" -m dcae_deploy.bench.gpu_check --kodak "$kodak" "${bundles[@]}" "$@"
