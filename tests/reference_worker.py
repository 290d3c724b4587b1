"""The PyTorch reference in a subprocess, for cross-setup tests: run with
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` it computes as another CPU
family does.

    python -m tests.reference_worker encode OUT_DIR IMAGE...   # OUT_DIR/<stem>.dcae + .npz (symbols, scales)
    python -m tests.reference_worker decode OUT.npz FILE...     # symbols and pixels per file, or the error

Uses the embedded model, or the checkpoint of `--checkpoint PATH` (before the
command). `encode --margin D` writes margin D instead of the model's own (as
this process computes it). Several commands run in one process (the model is
loaded once) when separated by `+`:

    python -m tests.reference_worker --checkpoint C encode A IMG + encode --margin 1e-3 B IMG + decode OUT.npz F
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str]) -> int:
    from dcae import load_checkpoint

    torch.set_num_threads(1)
    checkpoint = None
    if argv[:1] == ["--checkpoint"]:
        checkpoint, argv = argv[1], argv[2:]
    model = load_checkpoint(checkpoint).eval()
    commands = [[]]
    for arg in argv:
        if arg == "+":
            commands.append([])
        else:
            commands[-1].append(arg)
    for command in commands:
        run(model, command)
    return 0


def run(model, argv: list[str]) -> None:
    from dcae.coding import decode_dcae, encode_image
    from dcae_deploy.runtime.errors import DcaeError
    from dcae_deploy.runtime.portable import MODEL_MARGIN

    command, *argv = argv
    if command == "encode":
        margin = MODEL_MARGIN
        if argv[:1] == ["--margin"]:
            margin, argv = float(argv[1]), argv[2:]
        target, *paths = argv
        for path in map(Path, paths):
            data, out = encode_image(model, path, format="dcae", margin=margin)
            (Path(target) / f"{path.stem}.dcae").write_bytes(data)
            np.savez(Path(target) / f"{path.stem}.npz", symbols=out["symbols"].numpy().reshape(-1),
                     scales=out["scales"].numpy())
        return
    if command != "decode":
        sys.exit(f"reference_worker: unknown command {command!r} (encode, decode)")
    target, *paths = argv
    results = {}
    for k, path in enumerate(paths):
        try:
            pixels, symbols = decode_dcae(model, Path(path).read_bytes())
            results[f"pixels_{k}"], results[f"symbols_{k}"] = pixels, symbols
        except DcaeError as exc:
            results[f"error_{k}"] = np.array(f"{type(exc).__name__}: {exc}")
    np.savez(target, **results)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
