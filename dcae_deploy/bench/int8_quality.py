"""Rate and distortion of an int8 bundle against the fp32 bundle of the same model.

    python -m dcae_deploy.bench.int8_quality --calib TRAIN_DIR --images tests/data/kodak \\
        [--checkpoint C] [--count 4] [--calib-count 32] [--method percentile] [--work DIR]

Exports both bundles (fp32, and int8 for g_a, h_a, g_s with the entropy graphs
fp32), codes each image with the runtime (`dcae_deploy.runtime.codec.Codec`, onnxruntime
CPU) through both, and prints bpp (from the .dcae bytes) and PSNR of the
decoded uint8 image against the original, per image and averaged, measured in
one run. Every int8 stream is also decoded with its own bundle (the codec
refuses a desync), so a row is a real round trip.

`--setup BUNDLE:BACKEND` (repeatable) measures more setups beside those two,
against the same fp32 onnxruntime baseline, e.g. `--setup
int8:onnxruntime+openvino-bf16` for the int8 bundle with its image
transforms in OpenVINO bf16.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from dcae_deploy.calibration import CALIBRATION_METHODS, DEFAULT_METHOD
from dcae_deploy.runtime.metrics import psnr


def export_bundles(checkpoint, work: Path, calib: str, calib_count: int, method: str, threads: int, say,
                   precisions=("fp32", "int8")):
    from dcae.checkpoint import load_checkpoint
    from dcae_deploy.export.calibrate import make_int8_quantizer
    from dcae_deploy.export.export import export_bundle

    model = load_checkpoint(checkpoint)
    bundles = {}
    for precision in precisions:
        path = work / precision
        if not (path / "manifest.json").is_file():
            quantize = None
            if precision == "int8":
                quantize = make_int8_quantizer(model, calib, count=calib_count, method=method,
                                               cache_dir=work / "calib_cache", progress=say, threads=threads)
            t0 = time.perf_counter()
            export_bundle(model, path, precision=precision, quantize=quantize, source_checkpoint=checkpoint,
                          threads=threads, progress=lambda *a, **k: None)
            say(f"exported {precision} bundle to {path} in {time.perf_counter() - t0:.0f} s")
        bundles[precision] = path
    return bundles


BASELINE = "fp32"  # the fp32 bundle on onnxruntime: every row's deltas are against it
BUNDLE_PRECISIONS = ("fp32", "fp16", "int8")


def measure(bundles: dict, images: list[Path], threads: int, setups: tuple = ()) -> list[dict]:
    """Rows of {image, tag: {bpp, psnr, seconds}} for "fp32" and "int8" on
    onnxruntime and each "BUNDLE:BACKEND" of `setups`."""
    from dcae_deploy.runtime.codec import Codec
    from dcae_deploy.runtime.imaging import load_image

    # fp32 and int8 on onnxruntime always; other bundles (fp16) only as `setups` name them
    codecs = {tag: Codec(bundles[tag], threads=threads) for tag in ("fp32", "int8")}
    for setup in setups:
        bundle, backend = setup.split(":", 1)
        codecs[setup] = Codec(bundles[bundle], backend=backend, threads=threads)
    rows = []
    for image in images:
        pixels = load_image(image)
        row = {"image": image.name}
        for tag, codec in codecs.items():
            t0 = time.perf_counter()
            data = codec.compress(pixels)
            decoded = codec.decompress(data)
            row[tag] = {"bpp": len(data) * 8 / (pixels.shape[0] * pixels.shape[1]), "psnr": psnr(decoded, pixels),
                        "seconds": time.perf_counter() - t0}
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    tags = [tag for tag in rows[0] if tag != "image"]
    others = [tag for tag in tags if tag != BASELINE]
    header = f"{'image':<14} {'fp32 bpp':>9} {'fp32 PSNR':>10}"
    for tag in others:
        header += f" | {tag}: {'bpp':>7} {'PSNR':>7} {'d bpp %':>8} {'d PSNR':>7}"
    lines = [header]
    for r in rows + [_mean(rows, tags)]:
        f = r[BASELINE]
        line = f"{r['image']:<14} {f['bpp']:9.4f} {f['psnr']:10.3f}"
        for tag in others:
            q = r[tag]
            line += (f" | {'':{len(tag) + 1}} {q['bpp']:7.4f} {q['psnr']:7.3f} "
                     f"{100 * (q['bpp'] / f['bpp'] - 1):8.2f} {q['psnr'] - f['psnr']:7.3f}")
        lines.append(line)
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """Means over the images, a setup per row, against the fp32 onnxruntime baseline."""
    tags = [tag for tag in rows[0] if tag != "image"]
    mean = _mean(rows, tags)
    base = mean[BASELINE]
    lines = ["| setup (bundle:backend) | bpp | PSNR dB | d bpp % | d PSNR dB |", "|---|---|---|---|---|"]
    for tag in tags:
        q = mean[tag]
        name = "fp32:onnxruntime (baseline)" if tag == BASELINE else tag if ":" in tag else f"{tag}:onnxruntime"
        lines.append(f"| {name} | {q['bpp']:.4f} | {q['psnr']:.3f} | {100 * (q['bpp'] / base['bpp'] - 1):+.2f} | "
                     f"{q['psnr'] - base['psnr']:+.3f} |")
    return "\n".join(lines)


def _mean(rows: list[dict], tags: list[str]) -> dict:
    return {"image": "mean", **{tag: {k: float(np.mean([r[tag][k] for r in rows])) for k in ("bpp", "psnr")}
                                for tag in tags}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dcae_deploy.bench.int8_quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="default: the embedded fixture model")
    p.add_argument("--calib", required=True, help="calibration image folder")
    p.add_argument("--images", required=True, help="evaluation image folder (Kodak)")
    p.add_argument("--count", type=int, default=4, help="evaluation images, the first N sorted (default 4)")
    p.add_argument("--calib-count", type=int, default=32)
    p.add_argument("--method", default=DEFAULT_METHOD, choices=CALIBRATION_METHODS)
    p.add_argument("--work", default="int8_quality_work", help="bundles and calibration cache go here")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--setup", action="append", default=[], metavar="BUNDLE:BACKEND",
                   help="also measure BUNDLE (fp32, fp16 or int8) on BACKEND, e.g. int8:onnxruntime+openvino-bf16")
    args = p.parse_args(argv)
    from dcae_deploy.runtime.backends import backend_names

    for setup in args.setup:
        bundle, _, backend = setup.partition(":")
        if bundle not in BUNDLE_PRECISIONS or backend not in backend_names():
            p.error(f"--setup {setup!r}: want BUNDLE:BACKEND with BUNDLE fp32, fp16 or int8 and BACKEND one of "
                    f"{', '.join(backend_names())}")
    say = lambda *a: print(*a, file=sys.stderr)  # noqa: E731
    from dcae.checkpoint import DEFAULT_CHECKPOINT

    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    if not Path(checkpoint).is_file():
        print(f"int8_quality: no checkpoint at {checkpoint}", file=sys.stderr)
        return 1
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    precisions = [p for p in BUNDLE_PRECISIONS if p in ("fp32", "int8") or any(s.startswith(p + ":") for s in args.setup)]
    bundles = export_bundles(checkpoint, work, args.calib, args.calib_count, args.method, args.threads, say,
                             precisions)
    images = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() == ".png")[: args.count]
    rows = measure(bundles, images, args.threads, tuple(args.setup))
    print(table(rows))
    if args.setup:
        print(summary(rows))
    report = json.loads((bundles["int8"] / "int8_report.json").read_text())
    from dcae_deploy.calibration.quantize import format_report

    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint": str(checkpoint), "method": args.method,
                                               "calib_count": args.calib_count, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
