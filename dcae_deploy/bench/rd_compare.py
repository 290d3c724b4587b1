"""Two DCAE curves written by `rd_curves` on the same images, side by side,
with the BD-rate of the second against the first (e.g. a variable-rate
checkpoint against the untrained knob of the model it started from).

    python -m dcae_deploy.bench.rd_compare BASE/rd_curves.json OTHER/rd_curves.json [--out FILE.md]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from .rd_curves import bd_rates


def compare(base: dict, other: dict, base_path: str, other_path: str) -> str:
    if base["image_names"] != other["image_names"]:
        raise SystemExit("rd_compare: the two runs coded different images")
    a, b = base["dcae"], other["dcae"]
    bd = bd_rates(a, b)
    fmt = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
    lines = [
        "# Two DCAE curves on the same images",
        "",
        f"Base: [{base_path}]({base_path}) (`{a['bundle']}`); other: [{other_path}]({other_path}) (`{b['bundle']}`); "
        f"{base['images']} images from `{base['images_dir']}`, real files, runtime on onnxruntime.",
        "",
        "| quality | base bpp | base PSNR (dB) | base MS-SSIM | other bpp | other PSNR (dB) | other MS-SSIM |",
        "|---|---|---|---|---|---|---|",
    ]
    others = {p["quality"]: p for p in b["points"]}
    for p in a["points"]:
        q = others.get(p["quality"], {})
        lines.append(f"| {p['quality']:g} | {p['bpp']:.3f} | {fmt(p['psnr'], '.2f')} | {fmt(p['ms_ssim'], '.4f')} | "
                     f"{fmt(q.get('bpp'), '.3f')} | {fmt(q.get('psnr'), '.2f')} | {fmt(q.get('ms_ssim'), '.4f')} |")
    lines += ["", f"BD-rate of the other against the base (negative: fewer bits for the same quality, over the "
                  f"quality range both curves cover): PSNR {fmt(bd['psnr'], '+.1f')} %, MS-SSIM (dB) "
                  f"{fmt(bd['ms_ssim'], '+.1f')} %.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m dcae_deploy.bench.rd_compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", type=Path, help="rd_curves.json of the base curve")
    p.add_argument("other", type=Path, help="rd_curves.json of the curve compared with it")
    p.add_argument("--out", type=Path, help="Markdown file to write (default: print it)")
    args = p.parse_args(argv)
    # links relative to where the report is written
    where = args.out.parent if args.out else Path.cwd()
    link = lambda path: os.path.relpath(path.with_suffix(".md"), where)  # noqa: E731
    text = compare(json.loads(args.base.read_text()), json.loads(args.other.read_text()),
                   link(args.base), link(args.other))
    text = f"Command: `{shlex.join(['python', '-m', 'dcae_deploy.bench.rd_compare', *argv])}`\n\n" + text
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
