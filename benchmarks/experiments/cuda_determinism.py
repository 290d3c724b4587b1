"""Does the PyTorch reference on a CUDA GPU decode its own bitstreams?

    python benchmarks/experiments/cuda_determinism.py --images DIR [--limit N] [--checkpoint C]

For each image: encode and decode with `TorchReference(device="cuda")` (the
reference's own compress/decompress steps), count the symbols the decoder read
wrongly, under PyTorch's default CUDA settings (TF32 convolutions and matmuls,
cuDNN's heuristic algorithms) and then with TF32 off and
`torch.use_deterministic_algorithms(True)`. Also: the same slice context model
run twice on the same input, bit-identical or not. Prints a table; exit 0,
or 2 with a one-line error where PyTorch sees no CUDA GPU.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

from dcae_deploy.runtime.errors import BackendUnavailableError
from dcae_deploy.runtime.imaging import load_image, pad_image

from dcae_deploy.bench.torch_reference import TorchReference


def _settings(deterministic: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


@torch.no_grad()
def _repeatable(reference: TorchReference, pixels: np.ndarray) -> bool:
    """slice_params_1 twice on one input: the same bits?"""
    model = reference.model
    x = torch.from_numpy(pad_image(pixels)[0]).to(reference.device)
    y = model.g_a(x)
    z_hat = torch.round(model.h_a(y))
    scales, means = model.hyper_synthesis(z_hat)
    previous = [y[:, : model.config.slice_channels]]
    first = model.slice_params(1, scales, means, previous)
    second = model.slice_params(1, scales, means, previous)
    return all(torch.equal(a, b) for a, b in zip(first, second))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, type=Path)
    p.add_argument("--limit", type=int, default=4)
    p.add_argument("--checkpoint", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, when asked
    try:
        reference = TorchReference(args.checkpoint, device="cuda")
    except BackendUnavailableError as exc:
        print(f"cuda_determinism: error: {exc}", file=sys.stderr)
        return 2
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    paths = sorted(q for q in args.images.iterdir() if q.suffix.lower() == ".png")[: args.limit]
    print(f"{'settings':<34} {'image':<12} {'wrong symbols':>14} {'of':>8} {'repeatable':>10}")
    for label, deterministic in (("default (TF32, heuristic cuDNN)", False), ("TF32 off, deterministic algos", True)):
        _settings(deterministic)
        for path in paths:
            pixels = load_image(path)
            encoded = reference.encode(pixels)
            decoded = reference.decode_streams(encoded.y, encoded.z, encoded.height, encoded.width)
            wrong = int(np.count_nonzero(decoded.symbols != encoded.symbols))
            print(f"{label:<34} {path.name:<12} {wrong:>14} {encoded.symbols.size:>8} "
                  f"{str(_repeatable(reference, pixels)):>10}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
