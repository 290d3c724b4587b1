"""How far a bundle's slice heads are from the PyTorch reference's, given the same inputs.

For each image the reference runs the whole encoder; each bundle's slice_params_i
graph then gets the reference's own inputs (latent scales and means, earlier
slices' y_hat), so that only the slice heads' arithmetic differs, not a moved
rounding upstream. Printed per bundle: the largest |mu| and |sigma| differences
and how many scale-table indexes and roundings round(y - mu) moved, in all
and per slice. A moved index is what desynchronises a decoder fed another
setup's stream (README: Portable bitstreams).

The default model is the official configuration with the golden deterministic
weights (tests/data/golden): their scales spread over the whole table, where a
random-init model's are all index 0 and would show nothing.

  python -m dcae_deploy.bench.entropy_agreement --images DIR --export DIR2   # golden model, both conv forms
  python -m dcae_deploy.bench.entropy_agreement --images DIR --bundle B [--bundle B2 ...] [--checkpoint C]

--export writes two fp32 bundles of the golden model into DIR2 (kept for a
second run): `winograd` (the default export) and `plain` (--no-winograd), and
compares both.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from dcae_deploy.bench.records import find_images
from dcae.checkpoint import load_checkpoint
from dcae.golden import golden_model
from dcae_deploy.export.export import ExportError, export_bundle
from dcae_deploy.runtime import Codec
from dcae_deploy.runtime.entropy import build_indexes
from dcae_deploy.runtime.errors import DcaeError
from dcae_deploy.runtime.imaging import load_image, pad_image


@torch.no_grad()
def reference_slice_inputs(model, pixels: np.ndarray) -> list[dict]:
    """Per slice: the reference's graph inputs, mu, scale, y slice, indexes, symbols."""
    x, _ = pad_image(pixels)
    y = model.g_a(torch.from_numpy(x))
    z = model.h_a(y)
    z_hat = model.entropy_bottleneck.decompress(model.entropy_bottleneck.compress(z), z.shape[-2:])
    scales, means = model.hyper_synthesis(z_hat)
    previous, slices = [], []
    for i, y_slice in enumerate(y.chunk(model.num_slices, 1)):
        mu, scale, support = model.slice_params(i, scales, means, previous)
        inputs = {"latent_scales": scales.numpy(), "latent_means": means.numpy()}
        if i:
            inputs["y_hat_prev"] = torch.cat(previous, 1).numpy()
        slices.append({"inputs": inputs, "mu": mu.numpy(), "scale": scale.numpy(), "y": y_slice.numpy(),
                       "indexes": model.gaussian_conditional.build_indexes(scale).numpy(),
                       "symbols": torch.round(y_slice - mu).numpy()})
        previous.append(model.slice_refine(i, support, torch.round(y_slice - mu) + mu))
    return slices


def slice_sessions(codec: Codec) -> list:
    """The bundle's slice_params graphs, loaded once on the codec's backend."""
    names = [f"slice_params_{i}" for i in range(codec.bundle.num_slices)]
    return [codec.backend.load(codec.manifest.graphs[n], codec.bundle.graph_path(n)) for n in names]


def compare_bundle(codec: Codec, slices: list[dict], sessions: list | None = None) -> dict:
    """The bundle's slice_params graphs on the reference's inputs, against the reference."""
    tables = codec.bundle.entropy
    sessions = sessions or slice_sessions(codec)
    row = {"moved_indexes": [], "moved_roundings": [], "max_mu_diff": 0.0, "max_scale_diff": 0.0, "symbols": 0}
    for session, ref in zip(sessions, slices, strict=True):
        out = session.run(ref["inputs"])
        indexes = build_indexes(out["scale"], tables.gaussian_scale_table, float(tables.gaussian_scale_bound))
        row["moved_indexes"].append(int(np.count_nonzero(indexes != ref["indexes"])))
        row["moved_roundings"].append(int(np.count_nonzero(np.round(ref["y"] - out["mu"]) != ref["symbols"])))
        row["max_mu_diff"] = max(row["max_mu_diff"], float(np.abs(out["mu"] - ref["mu"]).max()))
        row["max_scale_diff"] = max(row["max_scale_diff"], float(np.abs(out["scale"] - ref["scale"]).max()))
        row["symbols"] += ref["indexes"].size
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dcae_deploy.bench.entropy_agreement", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", action="append", default=[], help="bundle directory (repeatable)")
    p.add_argument("--export", metavar="DIR", help="export the golden model's winograd and plain fp32 bundles "
                                                   "into DIR (unless there) and compare both")
    p.add_argument("--images", required=True, help="image directory (e.g. tests/data/kodak)")
    p.add_argument("--limit", type=int, default=4, help="first N images (default: 4)")
    p.add_argument("--checkpoint", default=None,
                   help="reference checkpoint (default: the official configuration, golden weights)")
    p.add_argument("--threads", type=int, default=2, help="threads for PyTorch and onnxruntime (default: 2)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        model = (load_checkpoint(args.checkpoint) if args.checkpoint else golden_model()).eval()
        if args.export:
            if args.checkpoint:
                p.error("--export exports the golden model: leave out --checkpoint")
            for form in ("winograd", "plain"):
                path = Path(args.export) / form
                if not (path / "manifest.json").exists():
                    print(f"exporting the golden official model ({form} entropy convs) to {path}", flush=True)
                    export_bundle(model, path, preset="dcae", threads=args.threads, progress=lambda *a: None,
                                  winograd=form == "winograd")
                args.bundle.append(str(path))
        if not args.bundle:
            p.error("give --bundle or --export")
        codecs = {b: Codec(b, threads=args.threads) for b in args.bundle}
        sessions = {b: slice_sessions(codec) for b, codec in codecs.items()}
        for path in find_images(args.images, args.limit):
            slices = reference_slice_inputs(model, load_image(path))
            for bundle, codec in codecs.items():
                row = compare_bundle(codec, slices, sessions[bundle])
                print(f"{Path(path).stem} {bundle}: moved indexes {sum(row['moved_indexes'])} of {row['symbols']} "
                      f"(per slice {row['moved_indexes']}), roundings {sum(row['moved_roundings'])} "
                      f"(per slice {row['moved_roundings']}); max |d mu| {row['max_mu_diff']:.2e}, "
                      f"max |d scale| {row['max_scale_diff']:.2e}", flush=True)
    except (ValueError, DcaeError, ExportError) as exc:  # (CheckpointError is a ValueError)
        print(f"{p.prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
