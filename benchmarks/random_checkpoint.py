"""A checkpoint of a DCAE configuration at a fixed random initialisation.

    python -m benchmarks.random_checkpoint --preset dcae --seed 0 -o official_seed0.pth.tar

For timing a configuration whose trained weights are not at hand (the
official-size model): speed does not depend on the weights, rate-distortion
does, so such a model is benchmarked for speed only. Entropy tables are built
with `update(force=True)`, so the checkpoint exports and codes like a real one.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dcae.checkpoint import save_checkpoint
from dcae.config import PRESETS
from dcae.model import DCAE


def random_checkpoint(path: str | Path, preset: str = "dcae", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = DCAE(preset).eval()
    model.update(force=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, preset=preset, extra={"random_init_seed": seed})
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.random_checkpoint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="dcae", choices=list(PRESETS), help="configuration (default: dcae, official)")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed before building the model (default: 0)")
    p.add_argument("-o", "--output", required=True, help="checkpoint file to write")
    args = p.parse_args(argv)
    path = random_checkpoint(args.output, args.preset, args.seed)
    print(f"wrote {path} ({args.preset}, seed {args.seed}, {path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
