"""Quality and rate metrics, shared by the tests, training reports and benchmarks.

Inputs are uint8 (H, W, 3) arrays as the codecs return them; bpp counts the
real bytes of a coded file.
"""
from __future__ import annotations

import numpy as np

from dcae_deploy.runtime.metrics import bpp, psnr  # noqa: F401  (one definition, shared with the runtime)


def ms_ssim(reference: np.ndarray, decoded: np.ndarray) -> float:
    """MS-SSIM in [0, 1] (CompressAI's `ms-ssim-rgb`), via pytorch_msssim.

    MS-SSIM needs images of at least 161 px per side (four downsamplings of an
    11-px window); smaller images return NaN rather than a misleading value."""
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    if min(reference.shape[:2]) < 161:
        return float("nan")
    # float32: within 2e-7 of float64 on 8-bit images, and 3 to 4x faster
    # (pytorch_msssim's grouped convolutions have no fast float64 path).
    a = torch.from_numpy(np.array(reference)).permute(2, 0, 1)[None].float()
    b = torch.from_numpy(np.array(decoded)).permute(2, 0, 1)[None].float()
    return float(_ms_ssim(a, b, data_range=255.0))
