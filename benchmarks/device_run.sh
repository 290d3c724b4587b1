#!/usr/bin/env bash
# What this project measured on a lent GPU machine (the `device` tool of the
# workplace, an H100 host with PyTorch, onnxruntime-cpu, no TensorRT), in one
# call: the PyTorch reference on the GPU (torch-cuda) beside the CPU reference
# and the runtime, and the cross-hardware decodability matrix.
#
#   benchmarks/device_run.sh OUT_DIR [PART ...]     PART: fixture, official, official_int8
#
# fixture:  the embedded model on the 24 Kodak images of tests/data/kodak,
#           torch, torch-cuda, onnxruntime fp32 (REPEATS=2), with the matrix:
#           a .bin written on the GPU, decoded by the CPU reference and by the
#           runtime.
# official: the official-size configuration at random init (seed 0), one
#           768x512 image, speed only; every setup pinned to 2 cores
#           (taskset) with 2 threads, so the CPU figures are those of a quiet
#           2-core machine.
# official_int8: as official, plus int8 bundles for onnxruntime (entropy graphs
#           fp32, and int8 too), calibrated on 8 crops of CALIB (a folder of photos).
# REPEATS (timed runs per setup and round) and ROUNDS (official parts: the
# setups measured in turn that many times, each in a fresh process) as in
# run_results.sh.
# Needs compressai and pytorch-msssim importable (PYTHONPATH) besides the
# machine's own torch, onnxruntime, onnx, numba.
set -euo pipefail
out=$1; shift
parts=${*:-fixture official}
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
for part in $parts; do
    case $part in
    fixture)
        "$PYTHON" -m dcae_deploy.export.cli -o "$work/fixture_fp32" --quiet
        "$PYTHON" -m dcae_deploy.bench.cli --bundle "$work/fixture_fp32" --images "$repo/tests/data/kodak" \
            --backends torch,torch-cuda,onnxruntime --threads 2 --repeats "${REPEATS:-2}" \
            --note "lent GPU machine (device tool): torch-cuda on the GPU; CPU setups with 2 threads" \
            --out "$out/fixture" --files "$work/files_fixture" || echo "dcae-bench exit $?"
        ;;
    official | official_int8)
        "$PYTHON" -m dcae_deploy.bench.random_checkpoint --preset dcae --seed 0 -o "$work/official.pth.tar"
        "$PYTHON" -m dcae_deploy.export.cli "$work/official.pth.tar" -o "$work/official_fp32" --quiet
        bundles=(--bundle "$work/official_fp32")
        backends=torch,torch-cuda,onnxruntime
        note="official-size configuration at random init (seed 0), speed only; lent GPU machine, every setup pinned to 2 cores (taskset -c 0,1)"
        if [ "$part" = official_int8 ]; then
            for entropy in fp32 same; do
                "$PYTHON" -m dcae_deploy.export.cli "$work/official.pth.tar" -o "$work/int8_entropy_$entropy" \
                    --precision int8 --entropy-precision $entropy --calib "$CALIB" --calib-count 8 \
                    --calib-holdout 2 --calib-cache "$work/cache" --quiet
                bundles+=(--bundle "$work/int8_entropy_$entropy")
            done
            backends=torch,onnxruntime
            note="$note; int8 for onnxruntime calibrated on 8 crops"
        fi
        taskset -c 0,1 "$PYTHON" -m dcae_deploy.bench.cli "${bundles[@]}" --checkpoint "$work/official.pth.tar" \
            --images "$repo/tests/data/kodak" --limit 1 --speed-only --backends "$backends" --threads 2 \
            --repeats "${REPEATS:-3}" --rounds "${ROUNDS:-1}" --note "$note" --out "$out/$part" --files "$work/files_$part" \
            || echo "dcae-bench exit $?"
        ;;
    *) echo "unknown part $part" >&2; exit 64 ;;
    esac
done
rm -rf "$work"
