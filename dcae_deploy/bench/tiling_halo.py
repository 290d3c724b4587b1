"""The halo curve of tiled image transforms: how far a tiled g_a / g_s strays
from the whole-image run as the halo grows.

    python -m dcae_deploy.bench.tiling_halo --images tests/data/kodak --out benchmarks/results/tiling_halo.md

On one mosaic of the images (default 2048x1536, the landscape Kodak photos,
portrait ones turned), in one process:

- g_s: the whole-image encoder's file is entropy-decoded once; its y_hat goes
  through g_s whole and tiled (--tile latent pixels square, each --halos
  value); the 8-bit images are compared: mean and max absolute difference in
  levels, the share of 8-bit values that differ, and PSNR against the source.
- g_a: y from a tiled g_a against the whole-image y (max and mean |dy|), and
  the file the encoder writes with that y, decoded by a whole-image decoder:
  its bpp and PSNR against the whole-image encoder's file.

A control row runs tiles whose origins are off the window grid (by half a
period), which the planner never does, to show why it aligns them.
Writes a Markdown report (command, CPU, date, timings) to --out.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


MOSAIC_ROUNDS = 4  # each image at most once as it is, mirrored left-right, top-bottom and both


def mosaic_cells(images: list[Path]) -> list[np.ndarray]:
    """A mosaic's cells: the images landscape (portrait ones turned), in name
    order, cropped to the smallest one's height and width."""
    from dcae_deploy.runtime.imaging import load_image

    cells = []
    for path in sorted(images):
        pixels = load_image(path)
        cells.append(pixels if pixels.shape[0] <= pixels.shape[1] else np.rot90(pixels))
    ch, cw = min(c.shape[0] for c in cells), min(c.shape[1] for c in cells)
    return [c[:ch, :cw] for c in cells]


def mosaic_covers(cells: list[np.ndarray], height: int, width: int) -> bool:
    """Whether the cells, mirrored, cover height x width with no two cells alike."""
    ch, cw = cells[0].shape[:2]
    return -(-height // ch) * -(-width // cw) <= MOSAIC_ROUNDS * len(cells)


def mosaic(images: list[Path], height: int, width: int, cells: list[np.ndarray] | None = None) -> np.ndarray:
    """uint8 (height, width, 3): the images, landscape (portrait ones turned),
    row by row in name order, cropped to the size; where they do not cover
    it, they come round again mirrored (left-right, then top-bottom), so no
    two cells hold the same pixels. `cells`: `mosaic_cells(images)`, when
    already loaded."""
    cells = mosaic_cells(images) if cells is None else cells
    ch, cw = cells[0].shape[:2]
    rows, cols = -(-height // ch), -(-width // cw)
    base = len(cells)
    if not mosaic_covers(cells, height, width):
        raise SystemExit(f"mosaic: {base} images of {cw}x{ch} do not cover {width}x{height} even mirrored")
    mirrors = (lambda c: c, lambda c: c[:, ::-1], lambda c: c[::-1], lambda c: c[::-1, ::-1])
    cells = [mirrors[i // base](cells[i % base]) for i in range(rows * cols)]
    grid = np.concatenate([np.concatenate(cells[r * cols:(r + 1) * cols], axis=1) for r in range(rows)], axis=0)
    return np.ascontiguousarray(grid[:height, :width])


def _to_uint8(x_hat: np.ndarray, height: int, width: int) -> np.ndarray:
    from dcae_deploy.runtime.imaging import crop_to_uint8

    return crop_to_uint8(np.clip(x_hat, 0.0, 1.0), height, width)


def _set_tiles(codec, tile, halo: int, period: int | None = None) -> None:
    transforms = codec.transforms
    transforms.tile, transforms.halo = tile, halo
    if period is not None:
        transforms.period = period


def measure(bundle: str, images: list[Path], height: int, width: int, tile: int, halos: list[int],
            threads: int | None) -> dict:
    from dcae_deploy.runtime.codec import Codec
    from dcae_deploy.runtime.imaging import pad_image
    from dcae_deploy.runtime.metrics import bpp, psnr

    source = mosaic(images, height, width)
    codec = Codec(bundle, threads=threads)
    codec.load_graphs()
    period = codec.transforms.period
    whole = (1 << 20, 1 << 20)  # larger than any latent: one tile, the whole image
    square = (tile, tile)
    x, _ = pad_image(source)
    cases = [(h, period) for h in halos] + [("control", None)]

    def tiles_for(case):
        halo, grid = case
        # Control: the planner's rounding to a grid of half the period puts
        # origins off the window grid (halo period/2 + 1 makes them odd multiples).
        return (period // 2 + 1 + 8, period // 2) if halo == "control" else (halo, grid)

    _set_tiles(codec, whole, 0)
    started = time.perf_counter()
    y_whole = codec.transforms.analysis(x)
    ga_whole_s = time.perf_counter() - started
    encoded = codec.encode(source)
    decoded = codec.decode(encoded.data, synthesize=False)
    started = time.perf_counter()
    x_whole = codec.transforms.synthesis(decoded.y_hat)
    gs_whole_s = time.perf_counter() - started
    pixels_whole = _to_uint8(x_whole, height, width)
    whole_row = {"bpp": bpp(len(encoded.data), height, width), "psnr": psnr(source, pixels_whole),
                 "g_a_s": ga_whole_s, "g_s_s": gs_whole_s}

    g_s_rows, g_a_rows = [], []
    for case in cases:
        halo, grid = tiles_for(case)
        _set_tiles(codec, square, halo, grid)
        started = time.perf_counter()
        x_tiled = codec.transforms.synthesis(decoded.y_hat)
        seconds = time.perf_counter() - started
        plan = codec.transforms.last_plan["g_s"]
        tiled = _to_uint8(x_tiled, height, width)
        diff = np.abs(tiled.astype(np.int16) - pixels_whole.astype(np.int16))
        g_s_rows.append({"halo": case[0], "tiles": plan.count, "mean_abs": float(diff.mean()),
                         "max_abs": int(diff.max()), "values_off_pct": 100 * float((diff > 0).mean()),
                         "pixels_off_pct": 100 * float((diff.max(axis=2) > 0).mean()),
                         "psnr": psnr(source, tiled), "seconds": seconds})

        started = time.perf_counter()
        y_tiled = codec.transforms.analysis(x)
        seconds = time.perf_counter() - started
        tiles = codec.transforms.last_plan["g_a"].count
        dy = np.abs(y_tiled - y_whole)
        _set_tiles(codec, square, halo, grid)
        result = codec.encode(source)
        _set_tiles(codec, whole, 0, period)
        # Any decoder reads the file: decode it whole, as one that never tiles.
        pixels = codec.decompress(result.data)
        changed = float((result.symbols != encoded.symbols).mean())
        g_a_rows.append({"halo": case[0], "tiles": tiles, "max_dy": float(dy.max()), "mean_dy": float(dy.mean()),
                         "symbols_changed_pct": 100 * changed, "bpp": bpp(len(result.data), height, width),
                         "psnr": psnr(source, pixels), "seconds": seconds})
        _set_tiles(codec, whole, 0, period)
    return {"height": height, "width": width, "tile": tile, "period": period,
            "max_abs_y": float(np.abs(y_whole).max()), "whole": whole_row, "g_s": g_s_rows, "g_a": g_a_rows,
            "bundle": str(bundle)}


# Why the default is what it is (the curve above it is this model's; the
# official model's g_s reaches farther: see docs/tiling.md).
DEFAULT_HALO_REASON = (
    "It is the smallest halo on the curve at which a tiled g_a gives the whole-image y bit for bit, and a "
    "tiled g_s differs from the whole image only by float rounding (a level in a few values in 100,000): "
    "for the embedded model the influence of a latent pixel reaches 8 latent pixels through g_a and 12 "
    "through g_s, and what lies beyond 8 is below rounding. Halo 4 meets the tests' bounds too, with ~0.5 % "
    "of values a level off; it would save compute only with small tiles, and budget-sized tiles are large.")


def _halo_label(halo) -> str:
    return "control (origins off the window grid)" if halo == "control" else f"{halo} ({halo * 16} px)"


def report(result: dict) -> str:
    from dcae_deploy.runtime.tiling import DEFAULT_HALO

    w = result["whole"]
    after = result.get("load_after")
    mp = result["height"] * result["width"] / 1e6
    lines = [
        "# Tiled image transforms: the halo curve",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {result['cpu']}; date {result['date']}; load average {result['load_before']} before, "
        f"{after if after is not None else 'not recorded'} after (other jobs share the machine: times are "
        "indicative, the differences are not). "
        f"Bundle: `{result['bundle']}`. Image: a {result['width']}x{result['height']} mosaic of the Kodak photos "
        f"({mp:.2f} MP). Tiles of {result['tile']}x{result['tile']} latent pixels "
        f"({result['tile'] * 16}x{result['tile'] * 16} px), origins on the window grid "
        f"(every {result['period']} latent pixels, {result['period'] * 16} px); halo in latent pixels (16 px each).",
        "",
        f"Whole image: {w['bpp']:.4f} bpp, PSNR {w['psnr']:.3f} dB; g_a {w['g_a_s']:.1f} s, g_s {w['g_s_s']:.1f} s "
        f"({w['g_a_s'] / mp:.2f} / {w['g_s_s'] / mp:.2f} s per MP).",
        "",
        "## g_s (decoder): tiled against whole-image synthesis of the same y_hat",
        "",
        "| halo | tiles | mean abs (levels) | max abs (levels) | 8-bit values off | pixels off | "
        "PSNR (dB) | g_s time (s) | s per MP |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["g_s"]:
        lines.append(f"| {_halo_label(r['halo'])} | {r['tiles']} | {r['mean_abs']:.4f} | {r['max_abs']} | "
                     f"{r['values_off_pct']:.3f} % | {r['pixels_off_pct']:.3f} % | {r['psnr']:.3f} | "
                     f"{r['seconds']:.1f} | {r['seconds'] / mp:.2f} |")
    lines += [
        "",
        "## g_a (encoder): tiled against whole-image analysis; the file decoded by a whole-image decoder",
        "",
        f"max |y| of the whole-image y: {result['max_abs_y']:.1f}.",
        "",
        "| halo | tiles | max abs dy | mean abs dy | symbols changed | bpp | bpp vs whole | PSNR (dB) | "
        "PSNR vs whole (dB) | g_a time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["g_a"]:
        lines.append(f"| {_halo_label(r['halo'])} | {r['tiles']} | {r['max_dy']:.2e} | {r['mean_dy']:.2e} | "
                     f"{r['symbols_changed_pct']:.4f} % | {r['bpp']:.4f} | "
                     f"{100 * (r['bpp'] / w['bpp'] - 1):+.3f} % | {r['psnr']:.3f} | {r['psnr'] - w['psnr']:+.4f} | "
                     f"{r['seconds']:.1f} |")
    measured = [(r, a) for r, a in zip(result["g_s"], result["g_a"]) if r["halo"] != "control"]
    meets = [r["halo"] for r, a in measured if r["max_abs"] <= 1 and r["mean_abs"] <= 0.01
             and abs(a["bpp"] / w["bpp"] - 1) <= 0.001 and abs(a["psnr"] - w["psnr"]) <= 0.01]
    exact = [a["halo"] for r, a in measured if a["max_dy"] == 0]
    lines += [
        "",
        "Bounds the tests hold a tiled run to (tests/test_tiling.py): g_s mean abs <= 0.01 and max abs <= 1 "
        "level; g_a bpp within 0.1 % and PSNR within 0.01 dB of the whole-image encoder's. "
        f"Halos on this curve that meet them: {', '.join(map(str, meets)) or 'none'}; halos whose tiled y is "
        f"bit-identical to the whole-image y: {', '.join(map(str, exact)) or 'none'}.",
        "",
        f"The runtime's default halo (dcae_deploy.runtime.tiling.DEFAULT_HALO) is {DEFAULT_HALO} latent pixels "
        f"({DEFAULT_HALO * 16} px). " + DEFAULT_HALO_REASON,
        "",
    ]
    return "\n".join(lines)


def _measure_and_describe(args, argv) -> dict:
    from dcae_deploy.bench.machine import load_average
    from dcae_deploy.bench.records import run_facts
    from dcae_deploy.runtime.default_bundle import ensure_default_bundle

    width, height = (int(v) for v in args.size.lower().split("x"))
    bundle = args.bundle or str(ensure_default_bundle(announce=lambda m: print(m, file=sys.stderr)))
    images = [p for p in args.images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff")]
    facts = run_facts("dcae_deploy.bench.tiling_halo", argv)
    result = measure(bundle, images, height, width, args.tile, [int(h) for h in args.halos.split(",")], args.threads)
    return {**facts, **result, "load_after": load_average()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, help="directory of images (the Kodak set); needed unless --from-json")
    parser.add_argument("-b", "--bundle", help="bundle directory (default: the default model's bundle)")
    parser.add_argument("--size", default="2048x1536", help="mosaic size WxH (default 2048x1536)")
    parser.add_argument("--tile", type=int, default=32, help="tile side in latent pixels (default 32 = 512 px)")
    parser.add_argument("--halos", default="0,2,4,8", help="halos in latent pixels (default 0,2,4,8)")
    parser.add_argument("--threads", type=int, help="threads per graph (default: one per core)")
    parser.add_argument("--out", type=Path, help="Markdown report to write (default: print it)")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON")
    parser.add_argument("--from-json", type=Path, metavar="JSON",
                        help="write the report of an earlier run's --json instead of measuring")
    args = parser.parse_args(argv)
    if args.from_json:
        result = json.loads(args.from_json.read_text())
    elif args.images is None:
        parser.error("--images is required (or --from-json)")
    else:
        from .records import relative_paths

        result = relative_paths(_measure_and_describe(args, argv))
    from .records import emit_report

    emit_report(result, report, args.out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
