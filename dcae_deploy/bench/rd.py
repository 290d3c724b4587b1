"""Rate-distortion rows under CompressAI's `eval_model` JSON names.

bpp counts every byte of the file the setup wrote (its header included:
56 bytes for .dcae, 12 for upstream .bin; under 0.001 bpp at 768x512), so
`bpp == 8 * file size / pixels` holds for the files in the report.
`bpp_streams` is the y + z streams alone, as upstream's eval counts.
JPEG is Pillow's 4:2:0 at the quality whose rate is closest to the setup's
(`dcae_deploy.bench.kodak_rd.jpeg_at_rate`).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from dcae.metrics import bpp, ms_ssim, psnr

from .kodak_rd import jpeg_at_rate


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN / inf: MS-SSIM of a small image, PSNR of an exact one."""
    return None if value is None or not math.isfinite(value) else float(value)


def rd_row(image: str, pixels: np.ndarray, decoded: np.ndarray, file_bytes: int, stream_bytes: int,
           with_jpeg: bool = True) -> dict:
    h, w = pixels.shape[:2]
    rate = bpp(file_bytes, h, w)
    with warnings.catch_warnings():
        # torch.from_numpy on a read-only decoded image: harmless, MS-SSIM only reads it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        msssim = ms_ssim(pixels, decoded)
    row = {"image": image, "height": h, "width": w, "bytes": file_bytes, "bpp": rate,
           "bpp_streams": bpp(stream_bytes, h, w),
           "psnr-rgb": finite_or_none(psnr(pixels, decoded)),
           "ms-ssim-rgb": finite_or_none(msssim)}
    if with_jpeg:
        jpeg = jpeg_at_rate(pixels, rate)
        row["jpeg"] = {"quality": jpeg["quality"], "bpp": jpeg["bpp"], "psnr-rgb": finite_or_none(jpeg["psnr"])}
    return row


def _mean(rows: list[dict], get) -> float | None:
    values = [get(r) for r in rows]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def rd_mean(rows: list[dict]) -> dict:
    mean = {key: _mean(rows, lambda r, k=key: r.get(k))
            for key in ("bpp", "bpp_streams", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")}
    if rows and "jpeg" in rows[0]:
        mean["jpeg_bpp"] = _mean(rows, lambda r: r["jpeg"]["bpp"])
        mean["jpeg_psnr-rgb"] = _mean(rows, lambda r: r["jpeg"]["psnr-rgb"])
    return mean
