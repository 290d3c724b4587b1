"""A checkpoint of a DCAE configuration at a fixed initialisation.

    python -m dcae_deploy.bench.random_checkpoint --preset dcae --seed 0 -o official_seed0.pth.tar
    python -m dcae_deploy.bench.random_checkpoint --golden -o golden_official.pth.tar

For timing a configuration whose trained weights are not at hand (the
official-size model): speed does not depend on the weights, rate-distortion
does, so such a model is benchmarked for speed only. Entropy tables are built
with `update(force=True)`, so the checkpoint exports and codes like a real one.

`--golden` writes the official configuration with the golden deterministic
weights instead (tests/data/golden, upstream's generator, seed 0): not
trained either, but their scales spread over the whole scale table, where a
random init's all fall on index 0, so the entropy path, the side stream and
the decodability matrix are exercised as a trained model would exercise them.
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


def golden_checkpoint(path: str | Path) -> Path:
    """The official configuration with the golden deterministic weights (seed 0)."""
    from dcae.golden import golden_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, golden_model().eval(), preset="dcae", extra={"golden_weights_seed": 0})
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dcae_deploy.bench.random_checkpoint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="dcae", choices=list(PRESETS), help="configuration (default: dcae, official)")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed before building the model (default: 0)")
    p.add_argument("--golden", action="store_true",
                   help="the official configuration with the golden deterministic weights (no --preset, --seed)")
    p.add_argument("-o", "--output", required=True, help="checkpoint file to write")
    args = p.parse_args(argv)
    if args.golden:
        path = golden_checkpoint(args.output)
        what = "official configuration, golden weights (seed 0)"
    else:
        path = random_checkpoint(args.output, args.preset, args.seed)
        what = f"{args.preset}, seed {args.seed}"
    print(f"wrote {path} ({what}, {path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
