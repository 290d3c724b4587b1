"""Rate-distortion curves of JPEG, WebP, AVIF and JPEG XL on a folder of
images, and a DCAE bundle's curve over its quality knob against them.

    python -m dcae_deploy.bench.rd_curves --images tests/data/kodak [--bundle B] \\
        [--qualities 0,10,20,30,40,50,60,70,80,90,100] [--codecs jpeg,webp,avif,jxl] [--out DIR]

Each codec runs its quality sweep (`dcae_deploy.bench.codecs`) on every image;
a curve is the mean bpp (whole files) and the mean PSNR / MS-SSIM (RGB) over
the images at each setting, the usual way Kodak curves are drawn. A bundle
codes every image at each of --qualities (the runtime's quality knob, 0..100,
50 = the model's reference rate: `dcae_deploy.runtime.quality`): g_a, h_a and
h_s run once per image (`Codec.analyse`), the slice loop and entropy coding
once per quality (`Codec.code` at the quality's gain code: the bytes
`Codec.encode(quality=Q)` writes), and each file is decoded as a user would
(`Codec.decompress`). The report gives DCAE's curve, its BD-rate against each
codec on PSNR and on MS-SSIM (in dB, -10 log10(1 - MS-SSIM)), and per quality
the mean PSNR difference at the same bpp (each codec's PSNR interpolated
linearly in bpp, per image, at the bpp of DCAE's file of that image).
`--qualities 50` places the bundle's one reference rate against the curves.
`--codec-curves RUN/rd_curves.json` takes the codecs' curves from an earlier
run on the same images (the slow part; they do not depend on the bundle), and
`--dcae-curve RUN/rd_curves.json` DCAE's: with both, one report of two runs.
`bd_rate` (Bjontegaard, with monotone piecewise-cubic interpolation of log
rate over the quality range both curves cover) compares two curves. Writes
rd_curves.json, rd_curves.md and rd_curves.png under --out.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .codecs import CODECS, describe, unavailable_reason

PLOT = "rd_curves.png"
# The quality knob's whole range, every tenth: Q = 0 and 100 are the model's
# lowest and highest rate levels, 50 its reference rate.
DEFAULT_QUALITIES = tuple(range(0, 101, 10))
METRICS = ("psnr", "ms_ssim")  # what the BD-rates compare on


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

    if len(anchor) < 2 or len(test) < 2:
        return None
    qa, ra = log_rate_of_quality(anchor)
    qt, rt = log_rate_of_quality(test)
    if len(qa) < 2 or len(qt) < 2:
        return None
    low, high = max(qa[0], qt[0]), min(qa[-1], qt[-1])
    if high <= low:
        return None
    grid = np.linspace(low, high, 200)
    integrate = getattr(np, "trapezoid", None) or np.trapz  # NumPy 2 renamed it
    difference = integrate(PchipInterpolator(qt, rt)(grid) - PchipInterpolator(qa, ra)(grid), grid) / (high - low)
    return float((np.exp(difference) - 1) * 100)


def msssim_db(value: float | None) -> float | None:
    """MS-SSIM as -10 log10(1 - MS-SSIM): the scale its curves and BD-rates use."""
    if value is None or not math.isfinite(value):
        return None
    return float(-10 * math.log10(max(1 - value, 1e-9)))


def _finite(value) -> float | None:
    """JSON has no NaN: MS-SSIM of an image under 161 px a side, PSNR of an exact copy."""
    return None if value is None or not math.isfinite(value) else float(value)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def metric_points(curve: dict, metric: str) -> list[tuple[float, float]]:
    """(bpp, metric) of a curve's points; MS-SSIM in dB; points without the metric left out."""
    points = []
    for p in curve["points"]:
        value = msssim_db(p.get("ms_ssim")) if metric == "ms_ssim" else p.get(metric)
        if value is not None and p.get("bpp"):
            points.append((p["bpp"], value))
    return points


def bd_rates(anchor: dict, test: dict) -> dict:
    """{"psnr": %, "ms_ssim": %}: `test`'s BD-rate against `anchor` (curves
    with "points" of "bpp", "psnr", "ms_ssim"); negative: `test` needs fewer
    bits for the same quality. None where they share no quality range."""
    return {m: bd_rate(metric_points(anchor, m), metric_points(test, m)) for m in METRICS}


def _point(setting, rows: list[dict], **extra) -> dict:
    return {"setting": setting, **extra, **{key: _mean(r[key] for r in rows) for key in ("bpp", "psnr", "ms_ssim")},
            "images": rows}


def _measure_row(name: str, pixels: np.ndarray, data: bytes, decoded: np.ndarray) -> dict:
    from dcae.metrics import ms_ssim, psnr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        return {"image": name, "bpp": 8 * len(data) / (pixels.shape[0] * pixels.shape[1]),
                "psnr": _finite(psnr(pixels, decoded)), "ms_ssim": _finite(ms_ssim(pixels, decoded))}


def _say_point(say, label: str, setting, point: dict) -> None:
    psnr = f"{point['psnr']:.2f} dB" if point["psnr"] is not None else "PSNR –"
    say(f"{label} {setting}: {point['bpp']:.3f} bpp, {psnr}")


def measure_codec(code, settings, images: list[np.ndarray], names: list[str], label: str, say) -> dict:
    """Per setting: every image's bpp, PSNR and MS-SSIM, and their means.
    `code(pixels, setting)` returns (file bytes, decoded pixels)."""
    points = []
    for setting in settings:
        rows = []
        for name, pixels in zip(names, images):
            data, decoded = code(pixels, setting)
            rows.append(_measure_row(name, pixels, data, decoded))
        points.append(_point(setting, rows))
        _say_point(say, label, setting, points[-1])
    return {"label": label, "points": points}


DEFAULT_BUNDLE = "default"  # --bundle: the embedded model's bundle, exported on first use


def measure_dcae(bundle: str, qualities, images: list[np.ndarray], names: list[str], say,
                 threads: int | None = None, label: str = "DCAE") -> dict:
    """A bundle's curve over `qualities` (the runtime on onnxruntime, the
    default backend): per quality, every image's bpp, PSNR and MS-SSIM, and
    their means, with the gain code the quality codes at."""
    from dcae_deploy.runtime import Codec
    from dcae_deploy.runtime.default_bundle import ensure_default_bundle

    codec = Codec(ensure_default_bundle(say) if bundle == DEFAULT_BUNDLE else bundle, threads=threads)
    codes = {q: codec.rate_levels.gain_code(q) for q in qualities}
    rows: dict = {q: [] for q in qualities}
    for name, pixels in zip(names, images):
        analysis = codec.analyse(pixels)  # g_a, h_a, h_s once; each quality's slice loop below
        for q in qualities:
            data = codec.code(analysis, codes[q]).data
            rows[q].append(_measure_row(name, pixels, data, codec.decompress(data)))
    points = []
    for q in qualities:
        points.append(_point(q, rows[q], quality=q, gain_code=codes[q]))
        _say_point(say, label, f"quality {q:g}", points[-1])
    return {"label": label, "bundle": bundle, "checkpoint_sha256": codec.manifest.source_checkpoint_sha256,
            "rate_levels": codec.rate_levels.to_record(), "points": points}


def psnr_at_rate(curve: dict, image: str, rate: float) -> float | None:
    """A codec's PSNR on one image, interpolated linearly at `rate` bpp (None
    outside the rates its sweep reached)."""
    rows = sorted((r["bpp"], r["psnr"]) for p in curve["points"] for r in p["images"]
                  if r["image"] == image and r["psnr"] is not None)
    rates = [r for r, _ in rows]
    if not rows or not rates[0] <= rate <= rates[-1]:
        return None
    return float(np.interp(rate, rates, [q for _, q in rows]))


def against_codecs(curves: dict, point: dict) -> dict:
    """Per codec: the mean PSNR difference of DCAE's files against the codec at
    the same bpp, per image, over the images where the codec reaches that rate."""
    table = {}
    for curve in curves.values():
        deltas = [row["psnr"] - other for row in point["images"] if row["psnr"] is not None
                  and (other := psnr_at_rate(curve, row["image"], row["bpp"])) is not None]
        table[curve["label"]] = {"psnr_delta_db": float(np.mean(deltas)) if deltas else None,
                                 "images": len(deltas)}
    return table


def plot(curves: dict, dcae_curves: list[dict], path: Path, title: str | None = None) -> None:
    """PSNR and MS-SSIM (dB) against bpp: the codecs' curves dashed, each DCAE
    curve solid (a single point: a star), up to a little past DCAE's highest rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dcae_rates = [p["bpp"] for c in dcae_curves for p in c["points"] if p.get("bpp")]
    high = 1.25 * max(dcae_rates) if dcae_rates else 1.6
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = [(curve, {"linestyle": "--", "marker": ".", "alpha": 0.8}) for curve in curves.values()]
    styles += [(curve, {"linestyle": "-", "marker": "*" if len(curve["points"]) == 1 else "o",
                        "markersize": 12 if len(curve["points"]) == 1 else 5, "linewidth": 2})
               for curve in dcae_curves]
    for k, (curve, style) in enumerate(styles):
        for ax, metric in zip(axes, METRICS):
            points = [(r, v) for r, v in metric_points(curve, metric) if r <= high]
            if points:
                ax.plot(*zip(*points), color=f"C{k % 10}", label=curve["label"], **style)
    for ax, ylabel in zip(axes, ("PSNR (dB, RGB)", "MS-SSIM (dB: -10 log10(1 - MS-SSIM), RGB)")):
        ax.set_xlabel("bpp (whole files)")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, high)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # no MS-SSIM for images under 161 px a side
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(value) -> str:
    return "no common range" if value is None else f"{value:+.1f} %"


def _num(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def codec_lines(codecs: dict) -> list[str]:
    """One line per codec: library version, settings, quality sweep (`codecs.describe`)."""
    return [f"- {name}: {info['library']}, settings {info['settings'] or 'defaults'}, qualities "
            f"{', '.join(map(str, info['qualities']))}" for name, info in codecs.items()]


def curve_table(curve: dict) -> list[str]:
    lines = ["| quality | gain code | bpp | PSNR (dB) | MS-SSIM | MS-SSIM (dB) |", "|---|---|---|---|---|---|"]
    for p in curve["points"]:
        lines.append(f"| {p['quality']:g} | {p['gain_code']} | {_num(p['bpp'], '.4f')} | {_num(p['psnr'], '.2f')} | "
                     f"{_num(p['ms_ssim'], '.4f')} | {_num(msssim_db(p['ms_ssim']), '.2f')} |")
    return lines


def markdown(result: dict) -> str:
    lines = ["# Rate-distortion curves", "", f"Command: `{result['command']}`  ",
             f"Run: {result['created']}; CPU: {result['cpu']}; threads: {result['threads'] or 'library default'}  ",
             f"Images: {result['images']} from `{result['images_dir']}`", "", "Codecs and settings:", ""]
    lines += codec_lines(result["codecs"])
    if result.get("codec_curves_from"):
        lines.append(f"- The codecs' curves: codec curves from `{result['codec_curves_from']}` (an earlier run on "
                     "the same images; they do not depend on the bundle)")
    dcae = result.get("dcae")
    if result.get("dcae_curve_from"):
        lines.append(f"- DCAE's curve: from `{result['dcae_curve_from']}` (an earlier run on the same images)")
    if dcae:
        levels = dcae["rate_levels"]
        checkpoint = f" (checkpoint sha256 {dcae['checkpoint_sha256'][:16]})" if dcae.get("checkpoint_sha256") else ""
        lines.append(f"- DCAE: bundle `{dcae['bundle']}`{checkpoint} on onnxruntime, qualities "
                     f"{', '.join(format(p['quality'], 'g') for p in dcae['points'])} (rate levels: gains "
                     f"{', '.join(format(g, 'g') for g in levels['gains'])}, quality 50 = level {levels['reference']})")
    lines += ["", f"![RD curves]({PLOT})", "",
              "Curves: mean bpp (whole files) and mean PSNR / MS-SSIM (RGB) over the images at each setting."]
    if dcae and result.get("bd_rate"):
        lines += ["", "## BD-rate of DCAE against each codec", "",
                  "Bjontegaard delta rate (monotone cubic interpolation of log bpp over the quality range both "
                  "curves cover); negative: DCAE needs that many fewer bits for the same quality. MS-SSIM in dB.", "",
                  "| codec | BD-rate, PSNR | BD-rate, MS-SSIM |", "|---|---|---|"]
        for name, values in result["bd_rate"].items():
            lines.append(f"| {name} | {_pct(values['psnr'])} | {_pct(values['ms_ssim'])} |")
    if dcae:
        lines += ["", "## DCAE's curve", ""] + curve_table(dcae)
    if result.get("against"):
        names = list(next(iter(result["against"].values())))
        lines += ["", "## PSNR difference at the same bpp", "",
                  "Per quality, the mean over images of DCAE's PSNR minus the codec's at the bpp of DCAE's file of "
                  "that image (interpolated in the codec's sweep on that image; positive: DCAE is better; in "
                  "brackets the images where the codec reaches that rate).", "",
                  "| quality | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for quality, table in result["against"].items():
            cells = [f"{v['psnr_delta_db']:+.2f} dB ({v['images']})" if v["psnr_delta_db"] is not None
                     else "rate not reached" for v in table.values()]
            lines.append(f"| {quality} | " + " | ".join(cells) + " |")
    lines += ["", "## Codec points", "", "| codec | setting | bpp | PSNR (dB) | MS-SSIM |", "|---|---|---|---|---|"]
    for curve in result["curves"].values():
        for p in curve["points"]:
            lines.append(f"| {curve['label']} | {p['setting']} | {_num(p['bpp'], '.4f')} | {_num(p['psnr'], '.2f')} | "
                         f"{_num(p['ms_ssim'], '.4f')} |")
    return "\n".join(lines) + "\n"


def parse_list(text: str, kind=str) -> list:
    return [kind(v.strip()) for v in text.split(",") if v.strip()]


def parse_qualities(text: str) -> list[float]:
    """'0,50,100' -> [0, 50, 100]: sorted, distinct, each 0..100 (integers kept as int)."""
    from dcae_deploy.runtime.quality import check_quality

    try:
        values = {check_quality(v) for v in parse_list(text)}
    except Exception as exc:  # noqa: BLE001 - BadInputError: a usage error
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one quality")
    return [int(q) if q == int(q) else q for q in sorted(values)]


def parse_codecs(text: str) -> list[str]:
    """'jpeg,webp' -> ["jpeg", "webp"]; 'none' -> []."""
    keys = [] if text.strip().lower() == "none" else parse_list(text.lower())
    unknown = [k for k in keys if k not in CODECS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown codec(s) {', '.join(unknown)}; choose from {', '.join(CODECS)} "
                                         f"or none")
    return list(dict.fromkeys(keys))


def measure_codecs(keys: list[str], images: list[np.ndarray], names: list[str], say) -> dict:
    """{key: curve} of each codec's sweep on `images`."""
    curves = {}
    for key in keys:
        codec = CODECS[key]
        curves[key] = measure_codec(lambda px, q, c=codec: (data := c.encode(px, q), c.decode(data)),
                                    codec.qualities, images, names, codec.name, say)
    return curves


def earlier_run(path: str, names: list[str]) -> dict:
    """An earlier run's rd_curves.json, which must have measured the same images."""
    try:
        earlier = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not an rd_curves.json ({type(exc).__name__})") from None
    if not isinstance(earlier, dict) or not {"curves", "codecs", "dcae"} <= set(earlier):
        raise ValueError(f"{path}: not an rd_curves.json (no curves)")
    if earlier.get("image_names") != names:
        raise ValueError(f"{path} measured other images ({earlier.get('images')} images from "
                         f"{earlier.get('images_dir')})")
    return earlier


def earlier_codec_curves(path: str, keys: list[str], names: list[str]) -> tuple[dict, dict]:
    """The curves of `keys` and their codecs' versions and settings from an
    earlier run's rd_curves.json, which must have measured the same images."""
    earlier = earlier_run(path, names)
    curves, info = earlier["curves"], earlier["codecs"]
    missing = [CODECS[k].name for k in keys if k not in curves]
    if missing:
        raise ValueError(f"--codec-curves {path} has no curve of {', '.join(missing)}")
    return {k: curves[k] for k in keys}, {CODECS[k].name: info[CODECS[k].name] for k in keys}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m dcae_deploy.bench.rd_curves", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="folder of test images (e.g. tests/data/kodak)")
    p.add_argument("--limit", type=int, default=None, help="the first N images, sorted")
    p.add_argument("--bundle", default=None, help="a DCAE bundle to draw against the curves, or "
                   f"'{DEFAULT_BUNDLE}' for the embedded model's (default: none)")
    p.add_argument("--qualities", type=parse_qualities, default=list(DEFAULT_QUALITIES), metavar="Q1,Q2,...",
                   help="the bundle's qualities, 0..100 (default: "
                        f"{','.join(map(str, DEFAULT_QUALITIES))}); one quality (50: the reference rate) places a "
                        "single point")
    p.add_argument("--codecs", type=parse_codecs, default=list(CODECS), help="comma-separated subset of "
                   f"{','.join(CODECS)}, or none (default: all)")
    p.add_argument("--codec-curves", default=None, metavar="RD_CURVES_JSON",
                   help="take the codecs' curves from an earlier run's rd_curves.json on the same images "
                        "instead of measuring them again (they do not depend on the bundle)")
    p.add_argument("--dcae-curve", default=None, metavar="RD_CURVES_JSON",
                   help="take DCAE's curve from an earlier run's rd_curves.json on the same images instead of "
                        "coding with --bundle (with --codec-curves: the two runs' curves in one report)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="folder for rd_curves.{json,md,png}")
    args = p.parse_args(argv)
    from dcae.metrics import ms_ssim  # noqa: F401  (fail early without the [reference] extra)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # MS-SSIM's convolutions, as every other setup's
    from .records import find_images
    from dcae_deploy.runtime.cpu import cpu_description
    from dcae_deploy.runtime.imaging import load_image

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
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
    if args.bundle and args.dcae_curve:
        print("rd_curves: error: give --bundle or --dcae-curve, not both", file=sys.stderr)
        return 2
    codec_info = describe(args.codecs)
    try:
        if args.codec_curves:
            curves, codec_info = earlier_codec_curves(args.codec_curves, args.codecs, names)
        dcae = earlier_run(args.dcae_curve, names)["dcae"] if args.dcae_curve else None
        if args.dcae_curve and not dcae:
            raise ValueError(f"--dcae-curve {args.dcae_curve} has no DCAE curve")
    except ValueError as exc:
        print(f"rd_curves: error: {exc}", file=sys.stderr)
        return 2
    if args.bundle:
        dcae = measure_dcae(args.bundle, args.qualities, images, names, say, args.threads)
    if not args.codec_curves:
        curves = measure_codecs(args.codecs, images, names, say)
    from .records import relative_paths

    result = relative_paths({
        "command": shlex.join(["python", "-m", "dcae_deploy.bench.rd_curves", *argv]), "created": started,
        "date": started[:10], "cpu": cpu_description(), "threads": args.threads,
        "images_dir": args.images, "images": len(paths), "image_names": names,
        "codecs": codec_info, "codec_curves_from": args.codec_curves, "dcae_curve_from": args.dcae_curve,
        "dcae": dcae,
        "bd_rate": {c["label"]: bd_rates(c, dcae) for c in curves.values()} if dcae else None,
        "against": {format(pt["quality"], "g"): against_codecs(curves, pt) for pt in dcae["points"]}
        if dcae and curves else None,
        "curves": curves})
    text = markdown(result)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        plot(curves, [dcae] if dcae else [], out / PLOT, title=f"{len(paths)} images from {result['images_dir']}")
        (out / "rd_curves.md").write_text(text)
        (out / "rd_curves.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
