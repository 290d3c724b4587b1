"""Rate-distortion of a DCAE checkpoint on an image set (Kodak), with JPEG at the same rate.

    python -m dcae_deploy.bench.kodak_rd --images tests/data/kodak [--checkpoint C] [--out benchmarks/results]

Real compress/decompress with the PyTorch reference: bpp from the bytes of
the upstream-format file (y + z streams; the 12-byte .bin header counted
separately), PSNR and MS-SSIM on the decoded uint8 image. For each image,
Pillow's JPEG (4:2:0) at the quality whose rate is closest to ours gives the
comparison point. Also the histogram of scale-table indexes and the fraction
of y symbols coded with the escape (outside their CDF's range).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dcae_deploy.bench.machine import cpu_description
from dcae import load_checkpoint
from dcae.coding import decompress_image
from dcae.metrics import bpp, ms_ssim, psnr
from dcae_deploy.runtime.container import pack_bin
from dcae_deploy.runtime.imaging import load_image, pad_image

BIN_HEADER_BYTES = 12


def jpeg_at_rate(pixels: np.ndarray, target_bpp: float) -> dict:
    """Pillow JPEG (4:2:0) at the quality whose bpp is closest to target_bpp."""
    from .codecs import CODECS

    jpeg = CODECS["jpeg"]
    h, w = pixels.shape[:2]
    best = None
    for quality in range(5, 96):
        data = jpeg.encode(pixels, quality)
        rate = bpp(len(data), h, w)
        if best is None or abs(rate - target_bpp) < abs(best["bpp"] - target_bpp):
            best = {"quality": quality, "bpp": rate, "psnr": psnr(pixels, jpeg.decode(data))}
        if rate > target_bpp * 1.5:
            break
    return best


def escape_mask(symbols: np.ndarray, indexes: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Symbols the coder escapes: v = s - offset outside [0, cdf_length - 2)."""
    v = symbols - offsets[indexes]
    return (v < 0) | (v >= lengths[indexes] - 2)


def evaluate(model, paths: list[Path], progress=print) -> dict:
    gc = model.gaussian_conditional
    offsets, lengths = gc.offset.numpy(), gc.cdf_length.numpy()
    histogram = np.zeros(len(gc.scale_table), np.int64)
    escapes = total_symbols = 0
    rows = []
    for k, path in enumerate(paths, 1):
        pixels = load_image(path)
        h, w = pixels.shape[:2]
        x, _ = pad_image(pixels)
        t0 = time.perf_counter()
        out = model.compress(torch.from_numpy(x), return_latents=True)
        enc = time.perf_counter() - t0
        y_bytes, z_bytes = out["strings"][0][0], out["strings"][1][0]
        data = pack_bin(h, w, y_bytes, z_bytes)
        t0 = time.perf_counter()
        decoded = decompress_image(model, data)
        dec = time.perf_counter() - t0
        idx = out["indexes"].numpy().reshape(-1)
        sym = out["symbols"].numpy().reshape(-1)
        histogram += np.bincount(idx, minlength=len(histogram))
        escapes += int(escape_mask(sym, idx, offsets, lengths).sum())
        total_symbols += sym.size
        rate = bpp(len(y_bytes) + len(z_bytes), h, w)
        row = {"image": path.name, "bpp": rate, "bpp_with_header": bpp(len(data), h, w),
               "psnr-rgb": psnr(pixels, decoded), "ms-ssim-rgb": ms_ssim(pixels, decoded),
               "encoding_time": enc, "decoding_time": dec, "jpeg": jpeg_at_rate(pixels, rate)}
        rows.append(row)
        progress(f"[{k}/{len(paths)}] {path.name}: {rate:.3f} bpp, {row['psnr-rgb']:.2f} dB "
                 f"(JPEG q{row['jpeg']['quality']}: {row['jpeg']['bpp']:.3f} bpp, {row['jpeg']['psnr']:.2f} dB)")
    mean = lambda key: float(np.mean([r[key] for r in rows]))
    return {
        "images": rows,
        "mean": {"bpp": mean("bpp"), "bpp_with_header": mean("bpp_with_header"), "psnr-rgb": mean("psnr-rgb"),
                 "ms-ssim-rgb": mean("ms-ssim-rgb"), "encoding_time": mean("encoding_time"),
                 "decoding_time": mean("decoding_time"),
                 "jpeg_bpp": float(np.mean([r["jpeg"]["bpp"] for r in rows])),
                 "jpeg_psnr": float(np.mean([r["jpeg"]["psnr"] for r in rows]))},
        "index_histogram": histogram.tolist(),
        "index_entries_used": int((histogram > 0).sum()),
        "escape_fraction": escapes / max(total_symbols, 1),
    }


def markdown(result: dict, command: str) -> str:
    m = result["mean"]
    lines = [f"# Kodak rate-distortion: {result['model']}", "", f"Command: `{command}`", "",
             f"Machine: {result['machine']}", "",
             "| codec | bpp | PSNR (dB) | MS-SSIM |", "|---|---|---|---|",
             f"| DCAE {result['model']} | {m['bpp']:.3f} | {m['psnr-rgb']:.2f} | {m['ms-ssim-rgb']:.4f} |",
             f"| JPEG (Pillow, 4:2:0, per-image quality matched to the DCAE rate) | {m['jpeg_bpp']:.3f} | "
             f"{m['jpeg_psnr']:.2f} | |", "",
             f"bpp counts the y and z streams (as upstream's eval.py); with the 12-byte .bin header: "
             f"{m['bpp_with_header']:.3f}.", "",
             f"Scale-table indexes used: {result['index_entries_used']} of {len(result['index_histogram'])}; "
             f"escaped symbols: {result['escape_fraction']:.2e} of all y symbols.", "",
             "Index histogram (entry: count):", "", "```"]
    hist = result["index_histogram"]
    peak = max(hist) or 1
    for i, count in enumerate(hist):
        if count:
            lines.append(f"{i:2d} {count:9d} {'#' * max(1, round(40 * count / peak))}")
    lines += ["```", "", "| image | bpp | PSNR | MS-SSIM | JPEG bpp | JPEG PSNR |", "|---|---|---|---|---|---|"]
    for r in result["images"]:
        lines.append(f"| {r['image']} | {r['bpp']:.3f} | {r['psnr-rgb']:.2f} | {r['ms-ssim-rgb']:.4f} | "
                     f"{r['jpeg']['bpp']:.3f} | {r['jpeg']['psnr']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m dcae_deploy.bench.kodak_rd", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="folder of test images (e.g. tests/data/kodak)")
    p.add_argument("--checkpoint", default=None, help="checkpoint (default: the embedded model)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--out", default="benchmarks/results", help="folder for kodak_rd.json / kodak_rd.md")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = sorted(Path(args.images).glob("*.png"))[: args.limit]
    if not paths:
        raise SystemExit(f"error: no PNG images in {args.images}")
    model = load_checkpoint(args.checkpoint)
    result = evaluate(model, paths, progress=lambda s: print(s, file=sys.stderr))
    result["model"] = f"{getattr(model, 'preset', '?')} ({args.checkpoint or 'embedded default'})"
    result["machine"] = f"{cpu_description()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m dcae_deploy.bench.kodak_rd " + " ".join(argv if argv is not None else sys.argv[1:])
    result["command"] = command
    (out / "kodak_rd.json").write_text(json.dumps(result, indent=1))
    (out / "kodak_rd.md").write_text(markdown(result, command))
    m = result["mean"]
    print(f"mean over {len(paths)} images: {m['bpp']:.3f} bpp, {m['psnr-rgb']:.2f} dB, MS-SSIM {m['ms-ssim-rgb']:.4f}; "
          f"JPEG {m['jpeg_bpp']:.3f} bpp, {m['jpeg_psnr']:.2f} dB; indexes used {result['index_entries_used']}, "
          f"escapes {result['escape_fraction']:.2e}")


if __name__ == "__main__":
    main()
