"""Big images through the `dcae` command: peak memory and time per pixel as
the image grows, under a memory budget.

    python -m dcae_deploy.bench.big_images --images tests/data/kodak \\
        --sizes 2048x1536,4000x3000,6000x4000 --memory-limit 2G [-b BUNDLE] [--threads 2] \\
        [--out benchmarks/results/big_images.md --json benchmarks/results/big_images.json]

Each size is a mosaic of the images (`tiling_halo.mosaic`), coded by `dcae
compress` and decoded by `dcae decompress` in processes of their own
(`scaling.run_process`: peak RSS, wall time from start to exit, bundle
loading included; `dcae-bench --sizes` measures the same way, per setup).
Seconds per megapixel are compared with the smallest size's, the speed the
tiles must keep.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def measure(bundle: str | None, images: list[Path], sizes: list[tuple[int, int]], memory_limit: str | None,
            threads: int | None, say=print) -> dict:
    from dcae_deploy.runtime.imaging import save_image

    from .scaling import code_size, runtime_commands
    from .tiling_halo import mosaic, mosaic_cells

    commands = runtime_commands(bundle, None, threads, memory_limit)
    cells = mosaic_cells(images)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dcae-big-") as tmp:
        work = Path(tmp)
        for width, height in sizes:
            source = work / "mosaic.png"
            pixels = mosaic(images, height, width, cells)
            save_image(pixels, source)
            row = code_size(commands, source, pixels, work, cap=None)
            source.unlink()
            del pixels
            if row["outcome"] != "ok":
                command = commands.shown("compress" if row["stage"] == "encode" else "decompress")
                raise SystemExit(f"big_images: {command} failed on {width}x{height}: {row['reason']}")
            rows.append({"width": width, "height": height, "megapixels": height * width / 1e6,
                         **{k: row[k] for k in ("bpp", "psnr", "encode_peak", "encode_s", "decode_peak",
                                                "decode_s")}})
            say(f"{width}x{height}: encode {row['encode_s']:.1f} s, {row['encode_peak'] / 2**20:.0f} MiB; "
                f"decode {row['decode_s']:.1f} s, {row['decode_peak'] / 2**20:.0f} MiB")
    return {"bundle": bundle or "default", "memory_limit": memory_limit, "threads": threads, "rows": rows}


def report(result: dict) -> str:
    rows = result["rows"]
    first = rows[0]
    lines = [
        "# Big images: memory and time per pixel as the image grows",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {result['cpu']}; date {result['date']}; memory available at start {result['available']}; "
        f"load average {result['load_before']} before, {result['load_after']} after (other jobs share the "
        f"machine: times are indicative). Bundle: `{result['bundle']}`; threads "
        f"{result['threads'] or 'one per core'}; memory limit {result['memory_limit'] or 'the default'}. "
        "Images: mosaics of the Kodak photos. Peak RSS and wall time of each `dcae` process, start to exit.",
        "",
        "| image | MP | bpp | PSNR (dB) | encode peak | decode peak | encode s/MP | decode s/MP | "
        f"s/MP vs {first['width']}x{first['height']} (enc / dec) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        enc, dec = r["encode_s"] / r["megapixels"], r["decode_s"] / r["megapixels"]
        enc0, dec0 = first["encode_s"] / first["megapixels"], first["decode_s"] / first["megapixels"]
        lines.append(f"| {r['width']}x{r['height']} | {r['megapixels']:.1f} | {r['bpp']:.4f} | {r['psnr']:.2f} | "
                     f"{r['encode_peak'] / 2**20:.0f} MiB | {r['decode_peak'] / 2**20:.0f} MiB | {enc:.2f} | "
                     f"{dec:.2f} | {enc / enc0:.2f}x / {dec / dec0:.2f}x |")
    if len(rows) > 1:
        a, b = rows[-2], rows[-1]
        grow = lambda key: (b[key] - a[key]) / (b["megapixels"] - a["megapixels"]) / 2**20  # noqa: E731
        lines += ["", f"Between the two largest images, peak RSS grows by {grow('encode_peak'):.0f} MiB per MP "
                      f"encoding and {grow('decode_peak'):.0f} MiB per MP decoding: what is not tiled (the "
                      "entropy path on the whole latent, the image itself)."]
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="directory of images for the mosaics")
    parser.add_argument("--sizes", default="2048x1536,4000x3000,6000x4000", help="mosaic sizes WxH, comma-separated")
    parser.add_argument("--memory-limit", help="dcae's --memory-limit (default: dcae's default)")
    parser.add_argument("-b", "--bundle", help="bundle directory (default: the default model's bundle)")
    parser.add_argument("--threads", type=int, help="threads per graph")
    parser.add_argument("--out", type=Path, help="Markdown report to write (default: print it)")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    from dcae_deploy.runtime.memory import available_memory, format_size

    from .machine import load_average
    from .records import emit_report, find_images, relative_paths, run_facts

    sizes = [tuple(int(v) for v in size.lower().split("x")) for size in args.sizes.split(",")]
    images = find_images(args.images, None)
    available = available_memory()
    facts = {**run_facts("dcae_deploy.bench.big_images", argv),
             "available": format_size(available) if available else "unknown"}
    result = measure(args.bundle, images, sizes, args.memory_limit, args.threads,
                     say=lambda m: print(m, file=sys.stderr))
    result = relative_paths({**facts, **result, "load_after": load_average()})
    emit_report(result, report, args.out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
