"""Package a training checkpoint as the embedded default model.

    python -m dcae.fixture runs/small/last.pth.tar [-o dcae/weights/fixture.pth.tar]

Floating-point parameters are stored as float16 to keep the package small
(the loader widens them back to float32); the model *is* those rounded
weights: the entropy tables are rebuilt from them with `update(force=True)`,
and every measurement in benchmarks/results is made on the shipped file.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, model_from_state_dict


def round_to_half(model) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())


def package_fixture(src: str | Path, dst: str | Path = DEFAULT_CHECKPOINT) -> Path:
    model = load_checkpoint(src)
    round_to_half(model)
    model.update(force=True)
    state = {k: (v.half() if v.is_floating_point() and not _is_table(k) else v) for k, v in model.state_dict().items()}
    # check the widened state reproduces the model exactly before writing it
    reloaded = model_from_state_dict({k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()},
                                     model.config)
    for k, v in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v), k
    source = torch.load(src, map_location="cpu", weights_only=False)
    payload = {"state_dict": state, "config": model.config.to_dict(), "preset": source.get("preset", "small"),
               "step": source.get("step"), "training_args": source.get("args")}
    if source.get("rate_levels"):  # a variable-rate checkpoint: the quality knob's levels
        payload["rate_levels"] = source["rate_levels"]
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(dst)
    return dst


def _is_table(key: str) -> bool:
    return key.endswith(("scale_table", "scale_bound", ".bound", ".target", "quantiles"))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m dcae.fixture", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="training checkpoint (e.g. runs/small/last.pth.tar)")
    p.add_argument("-o", "--output", default=str(DEFAULT_CHECKPOINT), help="where to write (default: the package)")
    args = p.parse_args(argv)
    dst = package_fixture(args.checkpoint, args.output)
    print(f"wrote {dst} ({dst.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
