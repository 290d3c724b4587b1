"""`dcae-export build-engines BUNDLE`: a TensorRT plan for every graph.

    dcae-export build-engines bundle/ [--min-size 256x256] [--opt-size 512x768]
                                      [--max-size 2048x2048] [--check-only]

Writes `engines/<graph>.plan` and `engines/timing.cache` into the bundle and
records them in the manifest's `engines` (dcae_deploy/runtime/manifest.py): per graph the
file, its sha256, the graph's sha256 and precision, and the profile shapes;
for all, the GPU name, compute capability, TensorRT and CUDA versions. The
runtime's `tensorrt` backend refuses the plans on any other GPU model or
TensorRT version.

Sizes are padded image sizes, height x width (multiples of 128, at least
256); each graph's profile follows from the manifest's symbolic shapes
(h = H/16, w = W/16, zh = H/64, zw = W/64). One profile per graph.

How the plans are built, and why:
- The static check (tensorrt_check) runs before any build, so an unsupported
  node is named in seconds, with its graph, rather than by the parser after
  some graphs were built (`--check-only` runs it without TensorRT).
- Networks are strongly typed (NetworkDefinitionCreationFlag.STRONGLY_TYPED):
  TensorRT keeps every tensor in the type the ONNX graph gives it. Our graphs
  carry their precision in their types: fp16 graphs are fp16 with the
  LayerNorm / Softmax / attention-score islands deliberately left fp32
  (dcae_deploy/export/fp16.py), int8 graphs are QDQ (explicit quantisation, no
  calibrator). The weakly typed alternative (BuilderFlag.FP16 / INT8) would
  let TensorRT move those fp32 islands to fp16, where they overflow; it is
  deprecated since TensorRT 10.12 and removed in 11.
- fp32 graphs are built with TF32 off: TensorRT enables TF32 convolutions
  and matrix products by default on Ampere and later, which would put a
  10-bit mantissa into the entropy-parameter graphs (h_s, slice_*), whose
  outputs decide the scale indexes.
- One timing cache, kept in the bundle and reused across graphs and runs,
  so a rebuild on the same GPU skips most kernel timing.
- Plans are built into a staging directory and moved into engines/ only when
  all graphs built; the manifest is written last.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from dcae_deploy.runtime.errors import DcaeError
from dcae_deploy.runtime.fileio import absolute_path, write_atomically
from dcae_deploy.runtime.geometry import MIN_PADDED_SIDE, PAD_MULTIPLE, Y_DOWNSAMPLE, Z_DOWNSAMPLE
from dcae_deploy.runtime.manifest import ENGINES_DIR, GraphSpec, Manifest, graph_order, sha256_file

from .tensorrt_check import check_bundle, errors, summary, tensorrt_unavailable_reason

DEFAULT_MIN_SIZE = (256, 256)
DEFAULT_OPT_SIZE = (512, 768)  # Kodak, landscape
DEFAULT_MAX_SIZE = (2048, 2048)
TIMING_CACHE = "timing.cache"


class EngineBuildError(DcaeError):
    """A build that cannot start or failed; the message is one line."""


# ---- sizes and profiles ----------------------------------------------------------------

def parse_size(text: str) -> tuple[int, int]:
    """"512x768" -> (512, 768): a padded image size, height x width."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise EngineBuildError(f"size {text!r} is not HEIGHTxWIDTH, e.g. 512x768") from None
    for side in (height, width):
        if side < MIN_PADDED_SIDE or side % PAD_MULTIPLE:
            raise EngineBuildError(f"size {text}: each side must be a multiple of {PAD_MULTIPLE} and at least "
                                   f"{MIN_PADDED_SIDE} (a padded image size)")
    return height, width


def check_sizes(low, opt, high) -> None:
    for axis, label in ((0, "height"), (1, "width")):
        if not low[axis] <= opt[axis] <= high[axis]:
            raise EngineBuildError(f"profile {label}s must satisfy min <= opt <= max, got "
                                   f"{low[axis]}, {opt[axis]}, {high[axis]}")


def symbol_sizes(size: tuple[int, int]) -> dict[str, int]:
    """The manifest's shape symbols at a padded image size."""
    height, width = size
    return {"H": height, "W": width, "h": height // Y_DOWNSAMPLE, "w": width // Y_DOWNSAMPLE,
            "zh": height // Z_DOWNSAMPLE, "zw": width // Z_DOWNSAMPLE}


def profile_shapes(spec: GraphSpec, low, opt, high) -> dict[str, dict[str, list[int]]]:
    """{input: {"min": shape, "opt": shape, "max": shape}} for one graph."""
    out = {}
    for tensor in spec.inputs:
        out[tensor.name] = {
            key: [dim if isinstance(dim, int) else symbol_sizes(size)[dim] for dim in tensor.shape]
            for key, size in (("min", low), ("opt", opt), ("max", high))}
    return out


# ---- building ----------------------------------------------------------------------------

def _static_check(bundle_dir: Path, manifest: Manifest, progress) -> None:
    target = manifest.int8_target
    if target not in (None, "tensorrt"):
        raise EngineBuildError(
            f"the bundle's int8 graphs are quantised for {target} (uint8 activations, int32 biases), a form "
            f"TensorRT does not take: export again with --precision int8 --int8-target tensorrt")
    results = check_bundle(bundle_dir)
    progress(summary(results))
    problems = [p for found in results.values() for p in errors(found)]
    if problems:
        raise EngineBuildError(f"{summary(results)}; first: {problems[0]}")


class _Builder:
    """One TensorRT builder and timing cache for all graphs of a bundle."""

    def __init__(self, trt, engines_dir: Path, workspace_gb: float | None):
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.builder = trt.Builder(self.logger)
        self.workspace_gb = workspace_gb
        self.cache_path = engines_dir / TIMING_CACHE
        self.cache = None

    def _config(self, precision: str):
        trt = self.trt
        config = self.builder.create_builder_config()
        if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
        if self.workspace_gb:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(self.workspace_gb * (1 << 30)))
        if self.cache is None:
            stored = self.cache_path.read_bytes() if self.cache_path.is_file() else b""
            self.cache = config.create_timing_cache(stored)
            # A cache from another GPU or TensorRT is refused (not mixed in):
            # start a fresh one.
            if not config.set_timing_cache(self.cache, False):
                self.cache = config.create_timing_cache(b"")
        config.set_timing_cache(self.cache, False)
        return config

    def build(self, onnx_path: Path, spec: GraphSpec, shapes: dict) -> bytes:
        trt = self.trt
        network = self.builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            first = " ".join(str(parser.get_error(0)).split()) if parser.num_errors else "no detail"
            raise EngineBuildError(f"graph {spec.name}: TensorRT's ONNX parser refused it: {first}")
        config = self._config(spec.precision)
        profile = self.builder.create_optimization_profile()
        for name, shape in shapes.items():
            profile.set_shape(name, shape["min"], shape["opt"], shape["max"])
        config.add_optimization_profile(profile)
        plan = self.builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineBuildError(f"graph {spec.name}: TensorRT could not build an engine (its log above "
                                   f"says why)")
        return bytes(memoryview(plan))

    def save_cache(self) -> None:
        if self.cache is not None:
            write_atomically(self.cache_path, bytes(memoryview(self.cache.serialize())))


def build_engines(bundle_dir, min_size=DEFAULT_MIN_SIZE, opt_size=DEFAULT_OPT_SIZE, max_size=DEFAULT_MAX_SIZE,
                  progress=print, workspace_gb: float | None = None) -> Manifest:
    """Build every graph's plan into `bundle_dir/engines/` and record them in
    the manifest. `EngineBuildError` (one line) when TensorRT or a GPU is
    missing, the static check fails, or a build fails."""
    from dcae_deploy.runtime.tensorrt_backend import current_platform, import_tensorrt

    bundle_dir = Path(bundle_dir)
    check_sizes(min_size, opt_size, max_size)
    manifest = Manifest.read(bundle_dir)
    reason = tensorrt_unavailable_reason()
    if reason:  # --check-only runs the static check without TensorRT
        raise EngineBuildError(reason)
    _static_check(bundle_dir, manifest, progress)
    trt = import_tensorrt()
    platform = current_platform(trt)
    progress(f"building TensorRT {platform['tensorrt_version']} engines on {platform['gpu_name']} "
             f"(sm {platform['compute_capability']}), profile {_size(min_size)} .. {_size(opt_size)} .. "
             f"{_size(max_size)}")

    engines_dir = bundle_dir / ENGINES_DIR
    engines_dir.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=engines_dir))
    builder = _Builder(trt, engines_dir, workspace_gb)
    names = graph_order(manifest.num_slices)
    entries = {}
    try:
        for k, name in enumerate(names, 1):
            spec = manifest.graphs[name]
            shapes = profile_shapes(spec, min_size, opt_size, max_size)
            started = time.perf_counter()
            plan = builder.build(bundle_dir / spec.file, spec, shapes)
            file = f"{name}.plan"
            (staging / file).write_bytes(plan)
            entries[name] = {"file": file, "sha256": sha256_file(staging / file), "onnx_sha256": spec.sha256,
                             "precision": spec.precision, "shapes": shapes}
            progress(f"[{k}/{len(names)}] {name:<16} {spec.precision:<5} {len(plan) / 1e6:7.1f} MB  "
                     f"{time.perf_counter() - started:6.1f} s")
        for file in (entry["file"] for entry in entries.values()):
            os.replace(staging / file, engines_dir / file)
    finally:
        builder.save_cache()  # what was timed is kept even when a build failed
        shutil.rmtree(staging, ignore_errors=True)
    manifest.engines = {**platform, "profile": {"min": list(min_size), "opt": list(opt_size), "max": list(max_size)},
                        "timing_cache": TIMING_CACHE, "graphs": entries}
    manifest.write(bundle_dir)
    return manifest


def _size(size) -> str:
    return f"{size[0]}x{size[1]}"


# ---- command line ------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dcae-export build-engines",
        description="Build a TensorRT plan for every graph of a bundle (needs TensorRT and a CUDA GPU; "
                    "--check-only runs anywhere).")
    p.add_argument("bundle", type=absolute_path, help="bundle directory written by dcae-export")
    p.add_argument("--min-size", default=_size(DEFAULT_MIN_SIZE), help="smallest padded image, HxW (default 256x256)")
    p.add_argument("--opt-size", default=_size(DEFAULT_OPT_SIZE), help="size to tune for, HxW (default 512x768)")
    p.add_argument("--max-size", default=_size(DEFAULT_MAX_SIZE), help="largest padded image, HxW (default 2048x2048)")
    p.add_argument("--workspace-gb", type=float, default=None, help="builder workspace limit (default: TensorRT's)")
    p.add_argument("--check-only", action="store_true",
                   help="only the static check of the graphs against TensorRT's ONNX support matrix")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    say = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, file=sys.stderr))
    try:
        if args.check_only:
            # (Manifest.read: a one-line BundleError for a non-bundle)
            _static_check(Path(args.bundle), Manifest.read(args.bundle), say)
            return 0
        sizes = [parse_size(s) for s in (args.min_size, args.opt_size, args.max_size)]
        build_engines(args.bundle, *sizes, progress=say, workspace_gb=args.workspace_gb)
    except (DcaeError, OSError) as exc:
        print(f"dcae-export build-engines: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dcae-export build-engines: interrupted", file=sys.stderr)
        return 130
    say(f"engines written to {Path(args.bundle) / ENGINES_DIR}")
    return 0


def _one_line(exc) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
