"""Rate-distortion rows under CompressAI's `eval_model` JSON names.

bpp counts every byte of the file the setup wrote (its header included:
56 bytes for .dcae, 12 for upstream .bin; under 0.001 bpp at 768x512), so
`bpp == 8 * file size / pixels` holds for the files in the report.
`bpp_streams` is the y + z streams alone, as upstream's eval counts.
JPEG is Pillow's 4:2:0 at the quality whose rate is closest to the setup's
(`dcae_deploy.bench.kodak_rd.jpeg_at_rate`).

With qualities (dcae-bench --qualities), `setup_curves` makes each setup's
curve (the means over images at each quality) and compares it with the
codecs' curves of `dcae_deploy.bench.rd_curves`: BD-rate on PSNR and on
MS-SSIM in dB.
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


def setup_curves(setup_dicts: list[dict], qualities: list, codec_keys: list[str], images: list, say) -> dict:
    """The report's "rd_curves": per setup that coded at the qualities, its
    points (quality, gain code, mean bpp / PSNR / MS-SSIM over images); the
    curves of the codecs of `codec_keys` that run here, on the same `images`
    (paths), with their versions and settings; and each setup's BD-rate
    against each codec on PSNR and on MS-SSIM (dB)."""
    from dcae_deploy.runtime.imaging import load_image

    from .codecs import CODECS, describe, unavailable_reason
    from .rd_curves import bd_rates, measure_codecs

    curves = {}
    for s in setup_dicts:
        points = []
        for entry in s.get("rd_by_quality") or []:
            rows, mean = entry["images"], entry["mean"]
            if not rows:
                continue
            codes = sorted({r["gain_code"] for r in rows})
            points.append({"quality": entry["quality"], "gain_code": codes[0] if len(codes) == 1 else codes,
                           "bpp": mean["bpp"], "psnr": mean["psnr-rgb"], "ms_ssim": mean["ms-ssim-rgb"],
                           "images": len(rows)})
        if points:
            curves[s["name"]] = {"label": s["name"], "points": points}
    missing = {CODECS[k].name: reason for k in codec_keys if (reason := unavailable_reason(k))}
    runnable = [k for k in codec_keys if not unavailable_reason(k)]
    codec_curves = {}
    if runnable and curves:
        pixels = [load_image(path) for path in images]
        codec_curves = measure_codecs(runnable, pixels, [p.name for p in images], say)
    return {"qualities": qualities, "setups": curves, "codecs": describe(runnable), "codec_curves": codec_curves,
            "codecs_not_available": missing,
            "bd_rate": {name: {c["label"]: bd_rates(c, curve) for c in codec_curves.values()}
                        for name, curve in curves.items()}}
