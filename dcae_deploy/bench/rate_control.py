"""The quality knob and rate control on a folder of images: is bpp monotonic
in the quality on every image, do `--max-bytes` and `--target-bpp` land
within their window on every image, and what does rate control cost.

    python -m dcae_deploy.bench.rate_control --images tests/data/kodak [-b BUNDLE] \\
        [--out benchmarks/results/rate_control.md --json benchmarks/results/rate_control.json]

Per image: the image is analysed once (g_a, h_a, z, h_s) and coded at every
quality of the sweep (`--qualities`), as `dcae compress --quality` would code
it; each size target is then met by `Codec.encode(max_bytes=...)` /
`(target_bpp=...)`, and a plain encode (quality 50) is timed beside it.
Targets in bytes are set per image from its quality-50 file (`--max-bytes-of`:
shares of that size), so they lie in every image's range.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from dcae_deploy.runtime.quality import TARGET_TOLERANCE

def measure(bundle: str, images: list[Path], qualities: list[int], byte_shares: list[float],
            bpps: list[float], threads: int | None, say=print) -> dict:
    from dcae_deploy.runtime import Codec
    from dcae_deploy.runtime.imaging import load_image

    codec = Codec(bundle, threads=threads)
    codec.load_graphs()
    rows = []
    for path in images:
        pixels = load_image(path)
        height, width = pixels.shape[:2]
        analysis = codec.analyse(pixels)
        sizes = [len(codec.code(analysis, codec.rate_levels.gain_code(q)).data) for q in qualities]
        started = time.perf_counter()
        plain = codec.compress(pixels)
        plain_seconds = time.perf_counter() - started
        targets = []
        for kind, values in (("max_bytes", [max(1, int(share * len(plain))) for share in byte_shares]),
                             ("target_bpp", bpps)):
            for value in values:
                started = time.perf_counter()
                try:
                    data = codec.compress(pixels, **{kind: value})
                except Exception as exc:  # an unreachable target is a result, not a crash of the run
                    targets.append({"kind": kind, "value": value, "error": str(exc)})
                    continue
                seconds = time.perf_counter() - started
                goal = value if kind == "max_bytes" else value * height * width / 8
                targets.append({"kind": kind, "value": value, "bytes": len(data), "ratio": len(data) / goal,
                                "tries": len(codec.last_rate_search.tries), "seconds": seconds,
                                "time_vs_plain": seconds / plain_seconds})
        monotonic = all(b > a for a, b in zip(sizes, sizes[1:]))
        rows.append({"image": path.name, "height": height, "width": width, "bytes_by_quality": sizes,
                     "monotonic": monotonic, "plain_seconds": plain_seconds, "targets": targets})
        worst = max((abs(1 - t["ratio"]) for t in targets if "ratio" in t), default=0.0)
        say(f"{path.name}: {8 * sizes[0] / (height * width):.3f}..{8 * sizes[-1] / (height * width):.3f} bpp, "
            f"monotonic {monotonic}, worst target miss {100 * worst:.2f} %")
    return {"bundle": bundle, "qualities": qualities, "byte_shares": byte_shares, "bpps": bpps,
            "rate_levels": codec.rate_levels.to_record(), "threads": threads, "rows": rows}


def report(result: dict) -> str:
    rows = result["rows"]
    qualities = result["qualities"]
    pixels = [r["height"] * r["width"] for r in rows]
    mean_bpp = [statistics.fmean(8 * r["bytes_by_quality"][i] / n for r, n in zip(rows, pixels))
                for i in range(len(qualities))]
    targets = [t for r in rows for t in r["targets"]]
    met = [t for t in targets if "ratio" in t]
    inside = [t for t in met if 1 - TARGET_TOLERANCE <= t["ratio"] <= 1]
    over = [t for t in met if t["ratio"] > 1]
    lines = [
        "# Quality knob and rate control",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {result['cpu']}; date {result['date']}; threads {result['threads'] or 'one per core'}; "
        f"load average {result['load_before']} before, {result['load_after']} after. Bundle: `{result['bundle']}` "
        f"(rate levels: gains {', '.join(f'{g:.3g}' for g in result['rate_levels']['gains'])}, quality 50 on level "
        f"{result['rate_levels']['reference']}). Images: {len(rows)}.",
        "",
        "## bpp against the quality (mean over the images)",
        "",
        "| quality | " + " | ".join(str(q) for q in qualities) + " |",
        "|---|" + "---|" * len(qualities),
        "| bpp | " + " | ".join(f"{b:.3f}" for b in mean_bpp) + " |",
        "",
        f"bpp strictly increasing in the quality on {sum(r['monotonic'] for r in rows)} of {len(rows)} images; "
        f"per image the range is {min(8 * r['bytes_by_quality'][0] / n for r, n in zip(rows, pixels)):.3f}"
        f"–{max(8 * r['bytes_by_quality'][0] / n for r, n in zip(rows, pixels)):.3f} bpp at quality "
        f"{qualities[0]} and {min(8 * r['bytes_by_quality'][-1] / n for r, n in zip(rows, pixels)):.3f}"
        f"–{max(8 * r['bytes_by_quality'][-1] / n for r, n in zip(rows, pixels)):.3f} bpp at quality "
        f"{qualities[-1]}.",
        "",
        "## Rate control",
        "",
        f"Targets: `--max-bytes` at {', '.join(f'{s:g}' for s in result['byte_shares'])} of each image's quality-50 "
        f"file, `--target-bpp` {', '.join(f'{b:g}' for b in result['bpps'])}. A target is met when the file is "
        f"at most the target and at least {100 * (1 - TARGET_TOLERANCE):.0f} % of it.",
        "",
        f"Met: {len(inside)} of {len(targets)} ({len(over)} over the target; "
        f"{len(targets) - len(met)} refused as out of reach).",
        "",
        "| target | files | file / target: min | mean | max | tries: mean | max | time vs a plain encode: mean | max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(t["kind"], t["value"] if t["kind"] == "target_bpp" else None) for t in targets},
                  key=lambda k: (k[0], k[1] or 0))
    for kind, value in keys:
        group = [t for t in met if t["kind"] == kind and (value is None or t["value"] == value)]
        if not group:
            continue
        label = f"--target-bpp {value:g}" if kind == "target_bpp" else "--max-bytes (all shares)"
        ratios, tries, times = ([t[k] for t in group] for k in ("ratio", "tries", "time_vs_plain"))
        lines.append(f"| {label} | {len(group)} | {min(ratios):.4f} | {statistics.fmean(ratios):.4f} | "
                     f"{max(ratios):.4f} | {statistics.fmean(tries):.1f} | {max(tries)} | "
                     f"{statistics.fmean(times):.2f}x | {max(times):.2f}x |")
    refused = [t for t in targets if "error" in t]
    if refused:
        lines += ["", "Refused targets:", ""] + [f"- {t['kind']} {t['value']}: {t['error']}" for t in refused[:10]]
    lines += [
        "",
        "Rate control runs g_a, h_a, the z stream and h_s once and the slice loop and entropy coding once per "
        "try (`dcae_deploy.runtime.quality.search_gain_code`); the time ratio is against a plain quality-50 "
        "encode of the same image, timed in the same run.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="directory of images (e.g. tests/data/kodak)")
    parser.add_argument("-b", "--bundle", help="bundle directory (default: the default model's bundle)")
    parser.add_argument("--qualities", default=",".join(str(q) for q in range(0, 101, 5)),
                        help="qualities of the sweep (default 0,5,...,100)")
    parser.add_argument("--max-bytes-of", default="0.5,0.8,1.5",
                        help="--max-bytes targets as shares of each image's quality-50 file (default 0.5,0.8,1.5)")
    parser.add_argument("--target-bpps", default="0.25,0.5,1.0", help="--target-bpp targets (default 0.25,0.5,1.0)")
    parser.add_argument("--threads", type=int, help="threads per graph (default: one per core)")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--out", type=Path, help="Markdown report to write (default: print it)")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    from dcae_deploy.runtime.default_bundle import ensure_default_bundle

    from .machine import load_average
    from .records import emit_report, find_images, relative_paths, run_facts

    bundle = args.bundle or str(ensure_default_bundle(announce=lambda m: print(m, file=sys.stderr)))
    images = find_images(args.images, args.limit)
    facts = run_facts("dcae_deploy.bench.rate_control", argv)
    result = measure(bundle, images, [int(q) for q in args.qualities.split(",")],
                     [float(s) for s in args.max_bytes_of.split(",")], [float(b) for b in args.target_bpps.split(",")],
                     args.threads, say=lambda m: print(m, file=sys.stderr))
    result = relative_paths({**facts, **result, "load_after": load_average(), "bundle": args.bundle or "default"})
    emit_report(result, report, args.out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
