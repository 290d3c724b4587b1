"""Rate-distortion curves of JPEG, WebP, AVIF and JPEG XL on a folder of
images, and where a DCAE bundle stands against them.

    python -m dcae_deploy.bench.rd_curves --images tests/data/kodak [--bundle B] \\
        [--codecs jpeg,webp,avif,jxl] [--out DIR]

Each codec runs its quality sweep (`dcae_deploy.bench.codecs`) on every image;
a curve is the mean bpp (whole files) and the mean PSNR / MS-SSIM (RGB) over
the images at each setting, the usual way Kodak curves are drawn. A bundle
codes at its one rate: each codec's PSNR is interpolated (linearly in bpp,
per image) at the bpp of DCAE's file of that image, and the report gives the
mean difference. `bd_rate` (Bjontegaard, with monotone piecewise-cubic
interpolation of log rate over the quality range both curves cover) compares
two curves. Writes rd_curves.json, rd_curves.md and rd_curves.png under --out.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from .codecs import CODECS, describe, unavailable_reason


def bd_rate(anchor: list[tuple[float, float]], test: list[tuple[float, float]]) -> float | None:
    """Bjontegaard delta rate of `test` against `anchor`, in percent; each curve
    is a list of (bpp, quality metric) points. None where the curves share no
    quality range."""
    from scipy.interpolate import PchipInterpolator

    def log_rate_of_quality(points):
        points = sorted(points, key=lambda p: p[1])
        quality = np.array([p[1] for p in points], np.float64)
        log_rate = np.log(np.array([p[0] for p in points], np.float64))
        keep = np.concatenate([[True], np.diff(quality) > 0])  # strictly increasing for the fit
        return quality[keep], log_rate[keep]

    qa, ra = log_rate_of_quality(anchor)
    qt, rt = log_rate_of_quality(test)
    low, high = max(qa[0], qt[0]), min(qa[-1], qt[-1])
    if len(qa) < 2 or len(qt) < 2 or high <= low:
        return None
    grid = np.linspace(low, high, 200)
    integrate = getattr(np, "trapezoid", None) or np.trapz  # NumPy 2 renamed it
    difference = integrate(PchipInterpolator(qt, rt)(grid) - PchipInterpolator(qa, ra)(grid), grid) / (high - low)
    return float((np.exp(difference) - 1) * 100)


def measure_codec(code, settings, images: list[np.ndarray], names: list[str], label: str, say) -> dict:
    """Per setting: every image's bpp, PSNR and MS-SSIM, and their means.
    `code(pixels, setting)` returns (file bytes, decoded pixels)."""
    from dcae.metrics import ms_ssim, psnr

    points = []
    for setting in settings:
        rows = []
        for name, pixels in zip(names, images):
            data, decoded = code(pixels, setting)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                rows.append({"image": name, "bpp": 8 * len(data) / (pixels.shape[0] * pixels.shape[1]),
                             "psnr": psnr(pixels, decoded), "ms_ssim": ms_ssim(pixels, decoded)})
        mean = {key: float(np.mean([r[key] for r in rows])) for key in ("bpp", "psnr", "ms_ssim")}
        points.append({"setting": setting, **mean, "images": rows})
        say(f"{label} {setting}: {mean['bpp']:.3f} bpp, {mean['psnr']:.2f} dB")
    return {"label": label, "points": points}


def dcae_coder(bundle: str, threads: int | None):
    """The runtime on a bundle, at the bundle's one rate: (file bytes, decoded)."""
    from dcae_deploy.runtime import Codec

    codec = Codec(bundle, threads=threads)

    def code(pixels: np.ndarray, setting):
        data = codec.compress(pixels)
        return data, codec.decompress(data)

    return code


def psnr_at_rate(curve: dict, image: str, rate: float) -> float | None:
    """A codec's PSNR on one image, interpolated linearly at `rate` bpp (None
    outside the rates its sweep reached)."""
    rows = sorted(((r["bpp"], r["psnr"]) for p in curve["points"] for r in p["images"] if r["image"] == image))
    rates = [r for r, _ in rows]
    if not rows or not rates[0] <= rate <= rates[-1]:
        return None
    return float(np.interp(rate, rates, [q for _, q in rows]))


def against_codecs(curves: dict, point: dict) -> dict:
    """Per codec: the mean PSNR difference of DCAE's files against the codec at
    the same bpp, per image, over the images where the codec reaches that rate."""
    table = {}
    for curve in curves.values():
        deltas = [row["psnr"] - other for row in point["images"]
                  if (other := psnr_at_rate(curve, row["image"], row["bpp"])) is not None]
        table[curve["label"]] = {"psnr_delta_db": float(np.mean(deltas)) if deltas else None,
                                 "images": len(deltas)}
    return table


def plot(curves: dict, dcae: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for curve in curves.values():
        bpp = [p["bpp"] for p in curve["points"]]
        axes[0].plot(bpp, [p["psnr"] for p in curve["points"]], marker=".", label=curve["label"])
        axes[1].plot(bpp, [-10 * np.log10(max(1 - p["ms_ssim"], 1e-9)) for p in curve["points"]], marker=".",
                     label=curve["label"])
    if dcae:
        axes[0].plot([dcae["bpp"]], [dcae["psnr"]], "k*", markersize=12, label="DCAE (one rate)")
        axes[1].plot([dcae["bpp"]], [-10 * np.log10(max(1 - dcae["ms_ssim"], 1e-9))], "k*", markersize=12,
                     label="DCAE (one rate)")
    for ax, ylabel in zip(axes, ("PSNR (dB, RGB)", "MS-SSIM (dB: -10 log10(1 - MS-SSIM))")):
        ax.set_xlabel("bpp")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, 1.6)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict) -> str:
    lines = ["# Rate-distortion curves", "", f"Command: `{result['command']}`  ",
             f"CPU: {result['cpu']}; date: {result['date']}; images: {result['images']} from `{result['images_dir']}`",
             "", "Codecs and settings:", ""]
    for name, info in result["codecs"].items():
        lines.append(f"- {name}: {info['library']}, settings {info['settings'] or 'defaults'}, "
                     f"qualities {info['qualities'][0]}..{info['qualities'][-1]}")
    if result.get("dcae"):
        point = result["dcae"]
        lines.append(f"- DCAE: bundle `{point['bundle']}` at its one rate: {point['bpp']:.4f} bpp, "
                     f"{point['psnr']:.2f} dB, MS-SSIM {point['ms_ssim']:.4f}")
    lines += ["", "![RD curves](rd_curves.png)", ""]
    if result.get("against"):
        lines += ["DCAE against each codec at the same bpp, per image (positive: DCAE is better):", "",
                  "| codec | PSNR difference (dB) | images |", "|---|---|---|"]
        for name, values in result["against"].items():
            delta = values["psnr_delta_db"]
            lines.append(f"| {name} | {f'{delta:+.2f}' if delta is not None else 'rate not reached'} | "
                         f"{values['images']} |")
        lines.append("")
    lines += ["Mean points:", "", "| codec | setting | bpp | PSNR (dB) | MS-SSIM |", "|---|---|---|---|---|"]
    for curve in result["curves"].values():
        for p in curve["points"]:
            lines.append(f"| {curve['label']} | {p['setting']} | {p['bpp']:.4f} | {p['psnr']:.2f} | {p['ms_ssim']:.4f} |")
    return "\n".join(lines) + "\n"


def parse_list(text: str, kind=str) -> list:
    return [kind(v) for v in text.split(",") if v.strip()]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m dcae_deploy.bench.rd_curves", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="folder of test images (e.g. tests/data/kodak)")
    p.add_argument("--limit", type=int, default=None, help="the first N images, sorted")
    p.add_argument("--bundle", default=None, help="a DCAE bundle to place against the curves (default: none)")
    p.add_argument("--codecs", type=parse_list, default=list(CODECS), help="comma-separated subset of "
                   f"{','.join(CODECS)} (default: all)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="folder for rd_curves.{json,md,png}")
    args = p.parse_args(argv)
    from dcae.metrics import ms_ssim  # noqa: F401  (fail early without the [reference] extra)
    from dcae_deploy.bench.cli import find_images
    from dcae_deploy.runtime.cpu import cpu_description
    from dcae_deploy.runtime.imaging import load_image

    unknown = [k for k in args.codecs if k not in CODECS]
    if unknown:
        p.error(f"unknown codec(s) {', '.join(unknown)}; choose from {', '.join(CODECS)}")
    missing = {k: r for k in args.codecs if (r := unavailable_reason(k))}
    if missing:
        print("rd_curves: error: " + "; ".join(f"{CODECS[k].name}: {r}" for k, r in missing.items()), file=sys.stderr)
        return 2
    try:
        paths = find_images(args.images, args.limit)
    except ValueError as exc:
        print(f"rd_curves: error: {exc}", file=sys.stderr)
        return 2
    images = [load_image(path) for path in paths]
    names = [path.name for path in paths]
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    curves = {}
    dcae = measure_codec(dcae_coder(args.bundle, args.threads), ["bundle"], images, names, "DCAE", say)["points"][0] \
        if args.bundle else None
    for key in args.codecs:
        codec = CODECS[key]
        curves[key] = measure_codec(lambda px, q, c=codec: (data := c.encode(px, q), c.decode(data)),
                                    codec.qualities, images, names, codec.name, say)
    from .report import relative_paths

    result = relative_paths({
        "command": "python -m dcae_deploy.bench.rd_curves " + " ".join(argv), "cpu": cpu_description(),
        "date": time.strftime("%Y-%m-%d"), "images_dir": args.images, "images": len(paths),
        "codecs": describe(args.codecs),
        "dcae": {"bundle": args.bundle, **dcae} if dcae else None,
        "against": against_codecs(curves, dcae) if dcae else None, "curves": curves})
    text = markdown(result)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        plot(curves, dcae, out / "rd_curves.png")
        (out / "rd_curves.md").write_text(text)
        (out / "rd_curves.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
