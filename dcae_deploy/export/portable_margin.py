"""How far a model's scales differ between the setups installed here: the
export's check of the model's portable margin.

A bundle's portable margin is the model's own (`dcae.margin.model_margin`:
computed by the reference from its simulated float32 and float64 scales,
the same on every machine), and `dcae-export` records it in the manifest. Whether
the setups of this machine keep within it is measured here: for each image the
reference encodes once, and each setup recomputes every slice's scales from
that z_hat and those symbols (its own means and LRP feeding its later slices,
as a decoder does):

- `torch-float64`: the reference in float64, the anchor;
- `torch`: the reference in float32 on this CPU's default kernels;
- `torch-avx2`: the same in a subprocess with `ATEN_CPU_CAPABILITY=avx2` and
  `ONEDNN_MAX_CPU_ISA=AVX2` (another CPU family's float path);
- `onnxruntime`, `openvino`: the bundle's fp32 slice graphs in the runtime
  (OpenVINO where it is installed; the C++ host runs the same arithmetic).

Over the elements whose float64 scale lies within `dcae_deploy.runtime.portable.MAX_MARGIN`
of an index boundary (elsewhere no margin matters), each setup's largest
|ln sigma - ln sigma_float64| must stay under half the margin (a file with
margin delta is for setups within delta / 2 of float64): `outside_margin`
names those that do not, and the export fails on them.
`dcae_deploy.bench.sigma_agreement` reports the same measurement in full.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import warnings
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from dcae.margin import largest_ln_difference, near_boundaries, reference_encoding, torch_scales
from dcae_deploy import IMPORT_ROOT
from dcae_deploy.runtime.cpu import AVX2_KERNELS_ENV, cpu_description

ANCHOR = "torch-float64"


def runtime_scales(codec, z_hat: np.ndarray, symbols: np.ndarray, height: int, width: int) -> np.ndarray:
    """All slices' scales from a runtime `Codec`'s slice graphs, given z_hat and the symbols."""
    c = codec.bundle.slice_channels
    recorded = []

    def decode_slice(i, scale):
        recorded.append(scale.astype(np.float64))
        return symbols[:, c * i : c * (i + 1)]

    codec.decode_slices(z_hat, height, width, decode_slice)
    return np.concatenate(recorded, axis=1)


def kernel_scales(checkpoint: str | Path, inputs: list[tuple[np.ndarray, np.ndarray]], threads: int,
                  env: dict[str, str] = AVX2_KERNELS_ENV) -> list[np.ndarray]:
    """The float32 reference's scales under the kernels `env` selects (a
    subprocess started with it), per (z_hat, symbols)."""
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "inputs.npz", **{f"z_hat_{k}": z for k, (z, _) in enumerate(inputs)},
                 **{f"symbols_{k}": s for k, (_, s) in enumerate(inputs)})
        spec = {"checkpoint": str(checkpoint), "threads": threads, "inputs": str(Path(tmp) / "inputs.npz"),
                "count": len(inputs)}
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        result = subprocess.run([sys.executable, "-m", "dcae_deploy.export.portable_margin", "--worker",
                                 str(Path(tmp) / "spec.json"), str(Path(tmp) / "scales.npz")],
                                env={**os.environ, **env}, capture_output=True, text=True,
                                cwd=IMPORT_ROOT)
        if result.returncode:
            tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"the reference worker ({' '.join(f'{k}={v}' for k, v in env.items())}) failed: {tail}")
        scales = np.load(Path(tmp) / "scales.npz")
        return [scales[f"scales_{k}"] for k in range(len(inputs))]


def _worker(spec_path: str, out_path: str) -> None:
    from dcae.checkpoint import load_checkpoint

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    model = load_checkpoint(spec["checkpoint"]).eval()
    inputs = np.load(spec["inputs"])
    np.savez(out_path, **{f"scales_{k}": torch_scales(model, inputs[f"z_hat_{k}"], inputs[f"symbols_{k}"])
                          for k in range(spec["count"])})


def collect_scales(model, codecs: dict, images, threads: int = 1, checkpoint: str | Path | None = None,
                   extra_models: dict | None = None, on_image=None,
                   kernels: dict[str, dict[str, str]] | None = None) -> dict[str, np.ndarray]:
    """Every setup's scales, flattened over `images` (uint8 H x W x 3 arrays):
    `ANCHOR` (float64), torch, the reference on other `kernels` (name ->
    environment, run in a worker each; default torch-avx2), each of `codecs`
    (name -> runtime `Codec`) and of `extra_models` (name -> a float32 `DCAE`,
    e.g. compiled). `checkpoint` is the model's file for the workers (written
    to a temporary file when None). `on_image(k, pixels, compress_output)` is
    called after each image."""
    extra_models = extra_models or {}
    kernels = kernels or {"torch-avx2": AVX2_KERNELS_ENV}
    model = model.eval()
    scales = {name: [] for name in [ANCHOR, "torch", *kernels, *codecs, *extra_models]}
    inputs = []
    for k, pixels in enumerate(images, 1):
        height, width = pixels.shape[:2]
        z_hat, symbols, out = reference_encoding(model, pixels)
        inputs.append((z_hat, symbols))
        scales[ANCHOR].append(torch_scales(model, z_hat, symbols, torch.float64))
        scales["torch"].append(torch_scales(model, z_hat, symbols))
        for name, other in extra_models.items():
            scales[name].append(torch_scales(other, z_hat, symbols))
        for name, codec in codecs.items():
            scales[name].append(runtime_scales(codec, z_hat, symbols, height, width))
        if on_image is not None:
            on_image(k, pixels, out)
    with tempfile.TemporaryDirectory() as tmp:
        if checkpoint is None:
            from dcae.checkpoint import save_checkpoint

            checkpoint = Path(tmp) / "model.pth.tar"
            save_checkpoint(checkpoint, model, getattr(model, "preset", None))
        for name, env in kernels.items():
            scales[name] = kernel_scales(checkpoint, inputs, threads, env)
    return {name: np.concatenate([s.reshape(-1) for s in v]) for name, v in scales.items()}


def measure(model, bundle_dir: str | Path, images: list[np.ndarray], threads: int = 1,
            backends: tuple[str, ...] = ("onnxruntime", "openvino"), checkpoint: str | Path | None = None,
            progress=None) -> dict:
    """Every setup's scales on `images` (uint8 H x W x 3 arrays) against
    float64 and against each other: the record a bundle's manifest keeps under
    `portable.measurement`. `checkpoint` is the model's file for the AVX2
    worker (written to a temporary file when None). Backends that are not
    installed are left out and named."""
    from dcae_deploy.runtime import Codec
    from dcae_deploy.runtime.errors import BackendUnavailableError

    progress = progress or (lambda message: None)
    codecs, unavailable = {}, []
    for backend in backends:
        try:
            with warnings.catch_warnings():
                # only the fp32 entropy graphs run here: a warning about the bundle's int8 graphs is not ours
                warnings.simplefilter("ignore")
                codecs[backend] = Codec(bundle_dir, backend=backend, threads=threads)
        except BackendUnavailableError:
            unavailable.append(backend)
    merged = collect_scales(
        model, codecs, images, threads, checkpoint,
        on_image=lambda k, pixels, out: progress(f"portable margin: image {k}/{len(images)} "
                                                 f"({pixels.shape[0]}x{pixels.shape[1]}) measured"))
    anchor = merged.pop(ANCHOR)
    relevant = near_boundaries(model, anchor)
    pairs = {f"{a} / {b}": largest_ln_difference(merged[a], merged[b], relevant)
             for a, b in combinations(merged, 2)}
    largest_pair = max(pairs, key=pairs.get)
    return {
        "setups": list(merged), "not_installed": unavailable,
        "images": [f"{p.shape[0]}x{p.shape[1]}" for p in images], "elements_near_boundaries": int(relevant.sum()),
        "vs_float64": {name: largest_ln_difference(v, anchor, relevant) for name, v in merged.items()},
        "pairs": pairs, "largest_pair": largest_pair, "largest_difference": pairs[largest_pair],
        "cpu": cpu_description(),
    }


def outside_margin(measurement: dict, margin: float) -> dict[str, float]:
    """{setup: its largest error against float64} for the setups of a
    `measure` record that stray `margin` / 2 or more: another setup's files
    with that margin may be refused there (never decoded wrongly)."""
    return {name: error for name, error in measurement["vs_float64"].items() if error >= margin / 2}


if __name__ == "__main__":
    if sys.argv[1:2] != ["--worker"] or len(sys.argv) != 4:
        sys.exit("usage: python -m dcae_deploy.export.portable_margin --worker SPEC.json OUT.npz (run by measure())")
    _worker(sys.argv[2], sys.argv[3])
