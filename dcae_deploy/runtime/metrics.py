"""Rate and distortion of decoded images, without torch (numpy only).

`dcae.metrics` re-exports these and adds MS-SSIM (which needs torch)."""
from __future__ import annotations

import math

import numpy as np


def psnr(reference: np.ndarray, decoded: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB over all channels (CompressAI's `psnr-rgb`)."""
    if reference.shape != decoded.shape:
        raise ValueError(f"shape mismatch {reference.shape} vs {decoded.shape}")
    mse = np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(peak**2 / mse)


def bpp(num_bytes: int, height: int, width: int) -> float:
    """Bits per pixel of a coded file of `num_bytes` for an H x W image."""
    return num_bytes * 8.0 / (height * width)
