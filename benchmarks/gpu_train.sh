#!/usr/bin/env bash
# Train the embedded model on a lent GPU machine for a fixed time, and bring the weights back.
#
# Two steps, because the GPU machine reaches no network and takes at most 64 MiB of files:
#
#   benchmarks/gpu_train.sh prepare TRAIN_DIR          # here, on this machine
#       writes .gpu_train/ (ignored by git): 256x256 training crops as JPEG (quality 97,
#       about 9 MB) and compressai's and pytorch-msssim's wheels for the GPU machine's
#       Python 3.12. Training starts from the embedded model, dcae/weights/fixture.pth.tar
#       (to start from a CPU run's weights, package them there first with python -m
#       dcae.fixture: a second copy would not fit in the 64 MiB that travel)
#   benchmarks/gpu_train.sh run                         # there: device tool, carry .gpu_train
#       installs the wheels, trains with --device cuda (bf16 autocast, crops of 256, batch
#       16) for SECONDS (default 420), and writes the new weights to $OUT as float16 in two
#       halves (each returned file must stay under 16 MiB)
#
# Back here: python -m dcae_deploy.bench.gpu_train_merge OUT_DIR -o runs/gpu/last.pth.tar joins the
# halves into a checkpoint that `python -m dcae.train --init` or `python -m dcae.fixture` takes.
#
# Environment: SECONDS_LIMIT=420 STEPS=200000 LMBDA=0.032 LR=1e-4 CROPS=240 PYTHON=python3
#   DEVICE=cuda (DEVICE=cpu with a small SECONDS_LIMIT checks the script here, with this
#   machine's packages instead of the wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DIR=.gpu_train

case "${1:-}" in
prepare)
    [ $# -ge 2 ] || { echo "usage: $0 prepare TRAIN_DIR" >&2; exit 2; }
    mkdir -p "$DIR/crops" "$DIR/whl"
    grep -qx "/$DIR/" .git/info/exclude 2>/dev/null || echo "/$DIR/" >> .git/info/exclude
    "$PYTHON" - "$2" "$DIR/crops" "${CROPS:-240}" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dcae.train import RandomCrops, list_images

source, target, count = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
crops = RandomCrops(list_images(source), 256, seed=0)
batch = crops.batch(count).mul(255).round().byte().permute(0, 2, 3, 1).numpy()
for k, crop in enumerate(batch):
    Image.fromarray(np.ascontiguousarray(crop)).save(target / f"crop{k:04d}.jpg", quality=97)
print(f"{count} crops in {target}")
EOF
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$DIR/whl" compressai==1.2.8 pytorch-msssim
    du -sh "$DIR"
    ;;
run)
    [ -d "$DIR/crops" ] || { echo "$DIR missing: run '$0 prepare' here first and carry $DIR" >&2; exit 2; }
    OUT="${OUT:-$DIR/out}"
    mkdir -p "$OUT"
    if [ "${DEVICE:-cuda}" = cuda ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$DIR"/whl/*.whl
    fi
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
    rm -rf /tmp/gpu_run
    "$PYTHON" -m dcae.train --data "$DIR/crops" --out /tmp/gpu_run --device "${DEVICE:-cuda}" \
        --crop 256 --batch-size 16 --steps "${STEPS:-200000}" --lmbda "${LMBDA:-0.032}" --lr "${LR:-1e-4}" \
        --lr-decay-at 1.0 --max-seconds "${SECONDS_LIMIT:-420}" --save-every 1000 --log-every 100 \
        --eval-images dcae_deploy/runtime/samples --eval-every 2000 2>&1 | tr '\r' '\n' | grep -v "^train:" || true
    cp /tmp/gpu_run/train_log.jsonl "$OUT/"
    "$PYTHON" - /tmp/gpu_run/last.pth.tar "$OUT" <<'EOF'
import sys

import torch

state = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
weights = {k: (v.half() if v.is_floating_point() else v) for k, v in state["state_dict"].items()}
keys = sorted(weights)
for half, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
    torch.save({"step": state["step"], "preset": state.get("preset"), "config": state.get("config"),
                "state_dict": {k: weights[k] for k in part}}, f"{sys.argv[2]}/weights_{half}.pt")
print(f"step {state['step']}: weights in {sys.argv[2]}")
EOF
    ;;
*)
    sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
