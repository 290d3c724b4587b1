"""What a per-channel choice among shifted scale thresholds would save (a design not built).

Today a portable file lists every y element whose scale lies within the
margin δ (ln) of an index boundary, about 6.4e-4 of all elements with the
embedded model at the default δ: 0.86 % of the file on Kodak. If encoder
and decoder instead moved every boundary of a channel by k * 2δ (ln) for a
k in 0..K-1 that the encoder picks per channel and signals, the encoder
would pick the k with the fewest elements within δ: the windows of the K
choices do not overlap, so a channel with one unlucky element under k = 0
usually has none under another k. A shift of at most 2δ(K-1) changes the
index of a handful of elements, a negligible change of rate (not counted).

For each image this prints and writes (`--out`) the listed elements and the
side stream's bytes (the current coder, `runtime.portable.encode_side_stream`)
for K = 1 (today's scheme), 2, 4, 8, plus the choices' cost: log2 K bits per
channel (flat) or their empirical entropy.

  python -m benchmarks.threshold_shifts --images ../shared/data/kodak [--limit N] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.cli import find_images
from benchmarks.machine import cpu_description
from dcae.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from dcae.coding import scale_thresholds
from runtime.container import HEADER_SIZE
from runtime.imaging import load_image, pad_image
from runtime.portable import DEFAULT_MARGIN, encode_side_stream

CHOICES = (1, 2, 4, 8)


def near_per_shift(log_scales: np.ndarray, log_critical: np.ndarray, margin: float, shifts: int) -> list[np.ndarray]:
    """For each shift k: the (channels, elements) mask of scales within `margin`
    of a boundary moved by k * 2 * margin (ln)."""
    masks = []
    for k in range(shifts):
        moved = log_critical + k * 2 * margin
        upper = np.clip(np.searchsorted(moved, log_scales), 1, moved.size - 1)
        distance = np.minimum(np.abs(log_scales - moved[upper - 1]), np.abs(log_scales - moved[upper]))
        masks.append(distance <= margin)
    return masks


def measure(images: list[Path], margin: float, threads: int) -> dict:
    torch.set_num_threads(threads)
    model = load_checkpoint(DEFAULT_CHECKPOINT).eval()
    log_critical = scale_thresholds(model).log_critical
    totals = {k: {"listed": 0, "side_bytes": 0, "choice_bytes_flat": 0.0, "choice_bytes_entropy": 0.0}
              for k in CHOICES}
    file_bytes = elements = 0
    for n, path in enumerate(images, 1):
        x, _ = pad_image(load_image(path))
        with torch.no_grad():
            out = model.compress(torch.from_numpy(x), return_latents=True)
        file_bytes += HEADER_SIZE + len(out["strings"][0][0]) + len(out["strings"][1][0])
        scales = out["scales"].numpy().astype(np.float64)
        channels = scales.shape[1]
        log_scales = np.log(scales.reshape(channels, -1))
        elements += log_scales.size
        for k in CHOICES:
            masks = near_per_shift(log_scales, log_critical, margin, k)
            choice = np.stack([m.sum(axis=1) for m in masks]).argmin(axis=0)
            chosen = np.stack([masks[c][channel] for channel, c in enumerate(choice)])
            positions = np.flatnonzero(chosen.reshape(-1)).astype(np.int64)
            t = totals[k]
            t["listed"] += int(positions.size)
            t["side_bytes"] += len(encode_side_stream(positions, np.zeros(positions.size, np.uint8), log_scales.size))
            p = np.bincount(choice, minlength=k) / channels
            p = p[p > 0]
            t["choice_bytes_entropy"] += float(-np.sum(p * np.log2(p)) * channels / 8)
            t["choice_bytes_flat"] += float(np.log2(k) * channels / 8)
        print(f"[{n}/{len(images)}] {path.name}", file=sys.stderr)
    rows = []
    for k, t in totals.items():
        flat = t["side_bytes"] + t["choice_bytes_flat"]
        entropy = t["side_bytes"] + t["choice_bytes_entropy"]
        rows.append({"shifts": k, **t, "listed_fraction": t["listed"] / elements,
                     "share_flat": flat / (file_bytes + flat), "share_entropy": entropy / (file_bytes + entropy)})
    return {"images": [p.name for p in images], "margin": margin, "cpu": cpu_description(),
            "file_bytes_without_side": file_bytes, "y_elements": elements, "rows": rows}


def to_markdown(result: dict, command: str) -> str:
    n = len(result["images"])
    lines = ["# Shifted thresholds per channel: an estimate of a design not built", "",
             f"Command: `{command}`", "",
             f"Embedded model, {n} images ({', '.join(result['images'][:4])}, ...), margin δ = "
             f"{result['margin']:g} (ln), CPU: {result['cpu']}. Per image: listed y elements and bytes; share "
             f"of the file (the reference's file plus the side stream and the choices). K = 1 is today's "
             f"portable file.", "",
             "| K shifts per channel | listed elements | share of y elements | side bytes | choice bytes (flat / "
             "entropy) | share of the file (flat choices) | share (entropy-coded choices) |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['shifts']} | {r['listed'] / n:.1f} | {r['listed_fraction']:.2e} | {r['side_bytes'] / n:.0f} | "
                     f"{r['choice_bytes_flat'] / n:.0f} / {r['choice_bytes_entropy'] / n:.0f} | "
                     f"{100 * r['share_flat']:.3f} % | {100 * r['share_entropy']:.3f} % |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.threshold_shifts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="folder of test images (e.g. Kodak)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N images (sorted)")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help=f"δ in ln (default {DEFAULT_MARGIN:g})")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, metavar="DIR", help="write threshold_shifts.md and .json there")
    args = p.parse_args(argv)
    try:
        images = find_images(args.images, args.limit)
    except ValueError as exc:
        p.error(str(exc))
    result = measure(images, args.margin, args.threads)
    command = "python -m benchmarks.threshold_shifts " + " ".join(argv if argv is not None else sys.argv[1:])
    text = to_markdown(result, command)
    print(text)
    if args.out:
        import json

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "threshold_shifts.md").write_text(text)
        (out / "threshold_shifts.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
