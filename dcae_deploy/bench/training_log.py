"""Where training of the embedded model stands: `dcae.train`'s log as a report.

    python -m dcae_deploy.bench.training_log runs/small/train_log.jsonl [--out benchmarks/results] [--jpeg-images KODAK]

Writes training_log.md (the Kodak evaluations, the training crops' loss, bpp
and PSNR averaged over spans of steps, seconds per step) and copies the log
beside it as training_log.jsonl, appending to what an earlier run left
there: the steps of both, the newer run's line where both have one.

With --jpeg-images (the evaluation images), each evaluation gets JPEG's PSNR
at its estimated bpp: Pillow JPEG 4:2:0 at qualities 5-95 over those images,
mean bpp and mean PSNR per quality, interpolated linearly in bpp. That is a
guide to where training stands; the claim against JPEG is kodak_rd.md's
(coded bytes, per-image quality matching).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SPAN = 250  # steps per row of the training table
JPEG_QUALITIES = range(5, 96, 5)


def jpeg_curve(folder: Path) -> list[tuple[float, float]]:
    """(mean bpp, mean PSNR) of Pillow JPEG 4:2:0 per quality over the images of folder."""
    import io

    import numpy as np
    from PIL import Image

    from dcae.metrics import bpp, psnr
    from dcae_deploy.runtime.imaging import load_image

    images = [load_image(p) for p in sorted(folder.iterdir()) if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    if not images:
        raise ValueError(f"no PNG or JPEG images in {folder}")
    curve = []
    for quality in JPEG_QUALITIES:
        rates, psnrs = [], []
        for pixels in images:
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG", quality=quality, subsampling=2)
            rates.append(bpp(buf.tell(), *pixels.shape[:2]))
            psnrs.append(psnr(pixels, np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))))
        curve.append((float(np.mean(rates)), float(np.mean(psnrs))))
    return curve


def jpeg_psnr_at(curve: list[tuple[float, float]], rate: float) -> float | None:
    """JPEG's PSNR at rate, interpolated on the curve; None outside it."""
    import numpy as np

    rates, psnrs = zip(*curve)
    if not rates[0] <= rate <= rates[-1]:
        return None
    return float(np.interp(rate, rates, psnrs))


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """Lines of both, by (kind, step), the newer run's line winning."""
    key = lambda r: ("eval" in r, r["step"])  # noqa: E731
    merged = {key(r): r for r in old}
    merged.update({key(r): r for r in new})
    return sorted(merged.values(), key=lambda r: (r["step"], "eval" in r))


def to_markdown(records: list[dict], cpu: str, jpeg: list[tuple[float, float]] | None = None) -> str:
    evals = [r for r in records if "eval" in r]
    train = [r for r in records if "loss" in r]
    lines = ["# Training log of the embedded model (`small` preset)", "",
             f"From `dcae.train`'s `train_log.jsonl` (`python -m dcae_deploy.bench.training_log`); CPU of the last "
             f"run: {cpu}. Evaluations use the bpp estimated from the likelihoods of the rounded latents (not "
             "coded bytes) and the PSNR of the reconstruction; the shipped model's coded results, with JPEG "
             "at the same rate, are in kodak_rd.md.", ""]
    if jpeg:
        lines += ["JPEG at that bpp: Pillow JPEG 4:2:0, mean bpp and PSNR per quality over the same images, "
                  "interpolated (`--jpeg-images`); a guide, not the claim.", ""]
    lines += ["## Evaluations", "", "| step | images | bpp (estimated) | PSNR (dB) | JPEG at that bpp (dB) | against JPEG (dB) |",
              "|---|---|---|---|---|---|"]
    for r in evals:
        at = jpeg_psnr_at(jpeg, r["eval"]["bpp"]) if jpeg else None
        versus = f"{at:.2f} | {r['eval']['psnr'] - at:+.2f}" if at is not None else "- | -"
        lines.append(f"| {r['step']} | {r['eval']['images']} | {r['eval']['bpp']:.4f} | {r['eval']['psnr']:.2f} | {versus} |")
    if not evals:
        lines.append("| - | - | - | - | - | - |")
    lines += ["", f"## Training crops, mean over spans of {SPAN} steps", "",
              "| steps | lambda | lr | crop | bf16 | loss | bpp | PSNR (dB) | s/step |",
              "|---|---|---|---|---|---|---|---|---|"]
    spans: dict[int, list[dict]] = {}
    for r in train:
        spans.setdefault((r["step"] - 1) // SPAN, []).append(r)
    for span, rows in sorted(spans.items()):
        mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
        last = rows[-1]
        lines.append(f"| {span * SPAN + 1}-{last['step']} | {last['lmbda']} | {last['lr']:g} | {last['crop']} | "
                     f"{last['bf16']} | {mean('loss'):.3f} | {mean('bpp'):.4f} | {mean('psnr'):.2f} | "
                     f"{mean('s_per_step'):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from dcae_deploy.bench.machine import cpu_description

    p = argparse.ArgumentParser(prog="python -m dcae_deploy.bench.training_log", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log", help="a train_log.jsonl written by python -m dcae.train")
    p.add_argument("--out", default="benchmarks/results", help="folder for training_log.md/.jsonl")
    p.add_argument("--jpeg-images", type=Path,
                   help="the evaluation images (e.g. Kodak): adds JPEG's PSNR at each evaluation's bpp")
    args = p.parse_args(argv)
    if args.jpeg_images is not None and not args.jpeg_images.is_dir():
        print(f"error: {args.jpeg_images} is not a folder", file=sys.stderr)
        return 2
    log, out = Path(args.log), Path(args.out)
    if not log.is_file():
        print(f"error: {log} is not a file", file=sys.stderr)
        return 2
    try:
        records = read_log(log)
    except (json.JSONDecodeError, KeyError) as exc:
        print(f"error: {log} is not a dcae.train log ({exc})", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    kept = out / "training_log.jsonl"
    records = merge(read_log(kept) if kept.is_file() else [], records)
    kept.write_text("".join(json.dumps(r) + "\n" for r in records))
    try:
        jpeg = jpeg_curve(args.jpeg_images) if args.jpeg_images else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    (out / "training_log.md").write_text(to_markdown(records, cpu_description(), jpeg))
    print(f"wrote {out / 'training_log.md'} ({len(records)} lines of log)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
