"""Join the two halves of weights that `benchmarks/gpu_train.sh run` returns into a checkpoint.

    python -m dcae_deploy.bench.gpu_train_merge OUT_DIR -o runs/gpu/last.pth.tar

OUT_DIR holds weights_0.pt and weights_1.pt (float16; each returned file of the
GPU machine must stay under 16 MiB). The checkpoint, in float32, is what
`python -m dcae.train --init` and `python -m dcae.fixture` take.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dcae.checkpoint import model_from_state_dict, save_checkpoint
from dcae.config import DCAEConfig


def merge(folder: Path, output: Path) -> int:
    halves = [torch.load(folder / f"weights_{k}.pt", map_location="cpu", weights_only=False) for k in (0, 1)]
    state = {k: (v.float() if v.is_floating_point() else v) for h in halves for k, v in h["state_dict"].items()}
    model = model_from_state_dict(state, DCAEConfig(**halves[0]["config"]))
    output.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(output, model, preset=halves[0]["preset"], step=halves[0]["step"])
    return halves[0]["step"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dcae_deploy.bench.gpu_train_merge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="the folder the GPU run's files came back to")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write")
    args = p.parse_args(argv)
    folder = Path(args.folder)
    missing = [f"weights_{k}.pt" for k in (0, 1) if not (folder / f"weights_{k}.pt").is_file()]
    if missing:
        print(f"error: {folder} lacks {', '.join(missing)}", file=sys.stderr)
        return 2
    step = merge(folder, Path(args.output))
    print(f"wrote {args.output} (step {step})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
