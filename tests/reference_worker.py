"""The PyTorch reference in a subprocess, for cross-setup tests: run with
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` it computes as another CPU
family does.

    python -m tests.reference_worker encode OUT_DIR IMAGE...   # OUT_DIR/<stem>.dcae + .npz (symbols, scales)
    python -m tests.reference_worker decode OUT.npz FILE...     # symbols and pixels per file, or the error

Uses the embedded model.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str]) -> int:
    from dcae import load_checkpoint
    from dcae.coding import decode_dcae, encode_image
    from dcae_deploy.runtime.errors import DcaeError

    torch.set_num_threads(1)
    model = load_checkpoint().eval()
    command, target, *paths = argv
    if command == "encode":
        for path in map(Path, paths):
            data, out = encode_image(model, path, format="dcae")
            (Path(target) / f"{path.stem}.dcae").write_bytes(data)
            np.savez(Path(target) / f"{path.stem}.npz", symbols=out["symbols"].numpy().reshape(-1),
                     scales=out["scales"].numpy())
        return 0
    results = {}
    for k, path in enumerate(paths):
        try:
            pixels, symbols = decode_dcae(model, Path(path).read_bytes())
            results[f"pixels_{k}"], results[f"symbols_{k}"] = pixels, symbols
        except DcaeError as exc:
            results[f"error_{k}"] = np.array(f"{type(exc).__name__}: {exc}")
    np.savez(target, **results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
