"""How far each setup's scales are from a float64 evaluation, and what a portable margin costs.

The decoder's scale (sigma) of every y element depends on z_hat and on the
symbols of the earlier slices, which are integers that every decoder reads
from the file. So for each image the reference encodes once, and every setup
then recomputes all slices' scales from those same z_hat and symbols (its own
means and LRP feeding its later slices, as a decoder does):

- `torch-float64`: the reference in float64, the anchor;
- `torch`: the reference in float32 on this CPU's default kernels;
- `torch-avx2`: the same in a subprocess with `ATEN_CPU_CAPABILITY=avx2` and
  `ONEDNN_MAX_CPU_ISA=AVX2` (another CPU family's float path);
- `torch-sse41`: the same with `ATEN_CPU_CAPABILITY=default` and
  `ONEDNN_MAX_CPU_ISA=SSE41` (a CPU without AVX2; on an AVX2-only CPU, whose
  default kernels are the AVX2 ones, the float path that differs);
- `torch-compile` (with `--compile`): the reference with `torch.compile` on
  its networks, as dcae-bench's torch-compile setup runs it
  (`dcae_deploy.bench.torch_reference.compile_model`): inductor's fused kernels must
  keep within the reference's stated bound for its portable files to decode;
- `BACKEND:NAME`: each bundle's slice graphs in the runtime, on each
  `--backend` (default onnxruntime).

Printed and written (`--out`, markdown + JSON): per setup the largest and the
99.99th percentile of |ln sigma - ln sigma_float64| over the elements whose
float64 scale lies within `dcae_deploy.runtime.portable.MAX_MARGIN` (ln) of an index
boundary (elsewhere no error a file's margin may cover moves an index), the
same for every pair of setups, and, for a
list of margins, the side stream's size and share of the file (the reference's
portable files): the curve that sizes `dcae_deploy.runtime.portable.DEFAULT_MARGIN` and
the backends' `sigma_error_bound`.

  python -m dcae_deploy.bench.sigma_agreement --images tests/data/kodak --bundle B [--bundle B2] \\
      [--backend onnxruntime --backend openvino] [--checkpoint C | --golden] [--limit N] [--compile]
      [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from dcae_deploy.bench.machine import cpu_description
from dcae_deploy.bench.setups import SETUP_ENV
from dcae.checkpoint import load_checkpoint
from dcae.coding import scale_thresholds
from dcae_deploy.export.portable_margin import ANCHOR, collect_scales, near_boundaries
from dcae_deploy.runtime import Codec
from dcae_deploy.runtime.container import HEADER_SIZE
from dcae_deploy.runtime.imaging import load_image
from dcae_deploy.runtime.portable import (DEFAULT_MARGIN, MAX_MARGIN, NO_SHIFTS, encode_portable, encode_side_stream,
                                          mark)
from dcae_deploy.runtime.rans import encode_with_indexes

MARGINS = tuple(sorted({1e-6, 3e-6, 1e-5, DEFAULT_MARGIN, 3e-5, 1e-4, 3e-4, 1e-3}))


def _load_model(args):
    if args.golden:
        from dcae.golden import golden_model

        return golden_model().eval()
    return load_checkpoint(args.checkpoint).eval()


# Bands of the float64 scale for the error by scale: float error in a scale
# head's output is about absolute, so its ln is largest at the smallest scales.
SCALE_BANDS = (0.11, 0.2, 0.5, 1.0, 2.0, 5.0, float("inf"))


def _by_scale(a: np.ndarray, anchor: np.ndarray, relevant: np.ndarray) -> list[dict]:
    """Per band of the float64 scale: the largest |ln a - ln anchor| and |a - anchor| near a boundary."""
    out = []
    for lo, hi in zip(SCALE_BANDS[:-1], SCALE_BANDS[1:]):
        m = relevant & (anchor >= lo) & (anchor < hi)
        out.append({"from": lo, "to": hi, "elements": int(m.sum()),
                    "max_ln": float(np.abs(np.log(a[m]) - np.log(anchor[m])).max()) if m.any() else 0.0,
                    "max_abs": float(np.abs(a[m] - anchor[m]).max()) if m.any() else 0.0})
    return out


def _error_stats(a: np.ndarray, b: np.ndarray, relevant: np.ndarray) -> dict:
    d = np.abs(np.log(a[relevant]) - np.log(b[relevant]))
    return {"max": float(d.max()) if d.size else 0.0,
            "p99.99": float(np.percentile(d, 99.99)) if d.size else 0.0, "elements": int(d.size)}


def measure(args) -> dict:
    torch.set_num_threads(args.threads)
    model = _load_model(args)
    thresholds = scale_thresholds(model)
    images = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".png", ".jpg", ".ppm"))
    images = images[: args.limit] if args.limit else images
    codecs = {f"{backend}:{Path(b).name}": Codec(b, backend=backend, threads=args.threads)
              for b in args.bundle for backend in args.backend or ["onnxruntime"]}
    compiled = None
    if args.compile:
        from dcae_deploy.bench.torch_reference import compile_model

        compiled = _load_model(args)
        compile_model(compiled)
    margins = tuple(sorted(set(MARGINS) | set(args.cost_margin)))
    costs = {m: {"side_bytes": 0, "marked": 0, "y_bytes_change": 0, "side_bytes_unshifted": 0,
                 "marked_unshifted": 0, "indexes_shifted": 0, "shift_choices": {}} for m in margins}
    file_bytes, elements = 0, 0
    gc = model.gaussian_conditional
    tables = (gc.quantized_cdf.cpu().numpy(), gc.cdf_length.cpu().numpy(), gc.offset.cpu().numpy())

    def cost_of_portability(k, pixels, out):
        """The reference's own portable files at each margin: the side stream
        the encoder writes (threshold shifts and marked list), the change of
        the y stream its shifted indexes make, and for comparison the side
        stream without shifts (the marked list alone)."""
        nonlocal file_bytes, elements
        encoder_scales, indexes = out["scales"].numpy(), out["indexes"].numpy()
        symbols, y_bytes = out["symbols"].numpy().reshape(-1), len(out["strings"][0][0])
        file_bytes += HEADER_SIZE + y_bytes + len(out["strings"][1][0])
        elements += encoder_scales.size
        for m in margins:
            m32 = float(np.float32(m))
            encoding = encode_portable(encoder_scales, indexes, thresholds, m32)
            costs[m]["side_bytes"] += len(encoding.side)
            costs[m]["marked"] += encoding.listed
            costs[m]["indexes_shifted"] += int(np.count_nonzero(encoding.indexes != indexes))
            chosen = (f"K={encoding.shifts.count}, block {encoding.shifts.block}" if encoding.shifts.count > 1
                      else "no shifts")
            costs[m]["shift_choices"][chosen] = costs[m]["shift_choices"].get(chosen, 0) + 1
            costs[m]["y_bytes_change"] += len(encode_with_indexes(symbols, encoding.indexes.reshape(-1),
                                                                  *tables)) - y_bytes
            positions, bits = mark(encoder_scales, indexes, thresholds, m32)
            costs[m]["side_bytes_unshifted"] += len(encode_side_stream(NO_SHIFTS, positions, bits,
                                                                       encoder_scales.size))
            costs[m]["marked_unshifted"] += int(positions.size)
        print(f"[{k}/{len(images)}] {images[k - 1].name}", file=sys.stderr)

    merged = collect_scales(model, codecs, [load_image(p) for p in images], args.threads, args.checkpoint,
                            {"torch-compile": compiled} if compiled is not None else None, cost_of_portability,
                            kernels=SETUP_ENV)  # torch-avx2, torch-sse41: dcae-bench's setups
    anchor = merged.pop(ANCHOR)

    def _share(extra: int) -> float:
        return extra / (file_bytes + extra)

    relevant = near_boundaries(model, anchor)
    vs_float64 = {name: _error_stats(v, anchor, relevant) for name, v in merged.items()}
    by_scale = {name: _by_scale(v, anchor, relevant) for name, v in merged.items()}
    pairs = {f"{a} / {b}": _error_stats(merged[a], merged[b], relevant) for a, b in combinations(merged, 2)}
    return {
        "model": "official configuration, golden weights" if args.golden else str(args.checkpoint or "embedded"),
        "images": [p.name for p in images], "cpu": cpu_description(), "threads": args.threads,
        "vs_float64": vs_float64, "by_scale": by_scale, "pairs": pairs, "y_elements": elements,
        "file_bytes_without_side": file_bytes,
        "margins": {f"{m:g}": {**costs[m], "share": _share(costs[m]["side_bytes"] + costs[m]["y_bytes_change"]),
                               "share_unshifted": _share(costs[m]["side_bytes_unshifted"]),
                               "marked_fraction": costs[m]["marked"] / elements,
                               "marked_fraction_unshifted": costs[m]["marked_unshifted"] / elements}
                    for m in margins},
    }


def to_markdown(r: dict) -> str:
    lines = [f"# Scale agreement across setups: {r['model']}", ""]
    if r.get("command"):
        lines += [f"Command: `{r['command']}`", ""]
    lines += [f"{len(r['images'])} images ({', '.join(r['images'][:4])}{', ...' if len(r['images']) > 4 else ''}), "
             f"{r['threads']} thread(s), CPU: {r['cpu']}.", "",
             f"|ln sigma - ln sigma_float64| over the elements within {MAX_MARGIN:g} (ln) of an index boundary "
             f"({r['vs_float64']['torch']['elements']} elements):", "",
             "| setup | max | 99.99th pct |", "|---|---|---|"]
    lines += [f"| {n} | {s['max']:.2e} | {s['p99.99']:.2e} |" for n, s in r["vs_float64"].items()]
    if r.get("by_scale"):
        bands = next(iter(r["by_scale"].values()))
        lines += ["", "By the float64 scale: the largest |ln sigma - ln sigma_float64| (and |sigma - sigma_float64|) "
                      "near a boundary; an error about constant in sigma is largest in ln at the smallest scales:", "",
                  "| setup | " + " | ".join(f"{b['from']:g}-{b['to']:g}" for b in bands) + " |",
                  "|---|" + "---|" * len(bands),
                  "| elements | " + " | ".join(str(b["elements"]) for b in bands) + " |"]
        lines += [f"| {n} | " + " | ".join(f"{b['max_ln']:.1e} ({b['max_abs']:.1e})" for b in bands) + " |"
                  for n, bands in r["by_scale"].items()]
    lines += ["", "Between setups, |ln sigma_a - ln sigma_b|:", "", "| pair | max | 99.99th pct |", "|---|---|---|"]
    lines += [f"| {n} | {s['max']:.2e} | {s['p99.99']:.2e} |" for n, s in r["pairs"].items()]
    lines += ["", "Cost of portability (the reference's portable files; all images together): the side stream "
                  "with threshold shifts as the encoder writes it, plus the change of the y stream's size that "
                  "its shifted indexes make, as a share of the file; for comparison the side stream without "
                  "shifts (the marked list alone):", "",
              "| margin | marked elements | share of y elements | side bytes | y stream bytes change | share of the "
              "file | without shifts: marked | side bytes | share |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {m}{' (default)' if float(m) == DEFAULT_MARGIN else ''} | {c['marked']} | "
              f"{c['marked_fraction']:.2e} | {c['side_bytes']} | {c['y_bytes_change']:+d} | "
              f"**{100 * c['share']:.3f} %** | {c['marked_unshifted']} | {c['side_bytes_unshifted']} | "
              f"{100 * c['share_unshifted']:.3f} % |"
              for m, c in r["margins"].items()]
    if any("shift_choices" in c for c in r["margins"].values()):
        lines += ["", "The encoder's choice per image, and the elements whose index the shifts moved to a "
                      "neighbouring table entry:", "", "| margin | choices (images) | indexes shifted |", "|---|---|---|"]
        lines += [f"| {m} | {'; '.join(f'{k}: {n}' for k, n in sorted(c['shift_choices'].items()))} | "
                  f"{c['indexes_shifted']} ({c['indexes_shifted'] / r['y_elements']:.2e}) |"
                  for m, c in r["margins"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m dcae_deploy.bench.sigma_agreement", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="folder of images (e.g. Kodak)")
    p.add_argument("--bundle", action="append", default=[], help="fp32-entropy bundle of the same model (repeat)")
    p.add_argument("--backend", action="append", default=[],
                   help="runtime backend to run the bundles' slice graphs on (repeat; default: onnxruntime)")
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: the embedded model)")
    p.add_argument("--golden", action="store_true", help="the official configuration with the golden weights")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true",
                   help="also the reference with torch.compile on its networks (needs a C++ compiler)")
    p.add_argument("--cost-margin", action="append", type=float, default=[], metavar="D",
                   help="also report the cost at this margin (repeat; e.g. a bundle's measured one)")
    p.add_argument("--stem", default=None, help="file name stem under --out (default: sigma_agreement[_golden])")
    p.add_argument("--out", default=None, help="folder for sigma_agreement[_golden].md/.json")
    args = p.parse_args(argv)
    for option in ("images", "checkpoint", "out"):
        if getattr(args, option):
            setattr(args, option, str(Path(getattr(args, option)).resolve()))
    args.bundle = [str(Path(b).resolve()) for b in args.bundle]
    from .records import relative_paths

    result = relative_paths({"command": "python -m dcae_deploy.bench.sigma_agreement " + " ".join(argv),
                             **measure(args)})
    text = to_markdown(result)
    print(text)
    if args.out:
        stem = args.stem or ("sigma_agreement_golden" if args.golden else "sigma_agreement")
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"{stem}.md").write_text(text)
        (Path(args.out) / f"{stem}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
