"""Export a DCAE model to a bundle: ONNX graphs, entropy tables, manifest.

Every graph is checked before the bundle is written: `onnx.checker`, strict
shape inference, then onnxruntime against the PyTorch module on the real
inputs that graph sees when coding a real image, at two padded sizes (the
export size and another one, so dynamic height and width are exercised).
An fp32 graph whose error exceeds 1e-4 relative fails the export.
"""
from __future__ import annotations

import contextlib
import json
import platform
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from dcae.coding import entropy_model_fingerprint
from dcae.margin import MARGIN_IMAGE, margin_record
from dcae.model import DCAE
from dcae_deploy.runtime.imaging import load_image, pad_image
from dcae_deploy.runtime.manifest import (
    ENTROPY_NAME,
    GraphSpec,
    Manifest,
    TensorSpec,
    is_entropy_graph,
    sha256_file,
)

from .flops import graph_flops
from .fp16 import convert_to_fp16
from .graphs import GraphDefinition, graph_definitions
from .reference_io import reference_graph_io
from .rewrites import ENTROPY_REWRITES, export_rewrites, quality_rewrites

FP32_TOLERANCE = 1e-4  # max |ort - torch| / max |torch|
DEFAULT_OPSET = 17
# The shipped sample photo, also the image the model's portable margin is computed on.
SAMPLE_IMAGE = MARGIN_IMAGE
# (height, width) of the two check sizes: the export trace and a second shape
CHECK_SIZES = ((256, 256), (384, 256))
INT8_REPORT_NAME = "int8_report.json"


class ExportError(RuntimeError):
    """The export failed a check; the message names the graph."""


@dataclass
class GraphReport:
    name: str
    precision: str
    file_bytes: int = 0
    max_abs_error: float = 0.0
    rel_error: float = 0.0
    export_seconds: float = 0.0
    torch_ms: float = 0.0
    ort_ms: float = 0.0
    extra: dict = field(default_factory=dict)


def precision_policy(precision: str, entropy_precision: str, names: list[str]) -> dict[str, str]:
    """Per graph precision: rate/quality graphs (g_a, h_a, g_s) at `precision`;
    entropy-parameter graphs (h_s, slice_*) in fp32 unless `entropy_precision`
    is "same"."""
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"unknown precision {precision!r}")
    if entropy_precision not in ("fp32", "same"):
        raise ValueError(f"unknown entropy precision {entropy_precision!r}")
    entropy = precision if entropy_precision == "same" else "fp32"
    return {n: (entropy if is_entropy_graph(n) else precision) for n in names}


def _check_images(image=None) -> list[np.ndarray]:
    pixels = load_image(image if image is not None else SAMPLE_IMAGE)
    return [pixels[:h, :w] for h, w in CHECK_SIZES]


def _traced_form(defn: GraphDefinition, precision: str, winograd: bool = True,
                 transforms_for: str = "onnxruntime"):
    """The rewrites a graph is traced with (dcae_deploy.export.rewrites): the rate /
    quality graphs always, those for the runtime `transforms_for`; the entropy
    graphs only their fp32-only Winograd convs, when they stay fp32 (and
    `winograd`)."""
    if not is_entropy_graph(defn.name):
        return export_rewrites(defn.module, quality_rewrites(transforms_for))
    if precision == "fp32" and winograd:
        return export_rewrites(defn.module, ENTROPY_REWRITES)
    return contextlib.nullcontext()


def _onnx_export(defn: GraphDefinition, inputs: dict[str, np.ndarray], path: Path, opset: int,
                 precision: str, winograd: bool = True, transforms_for: str = "onnxruntime") -> None:
    args = tuple(torch.from_numpy(inputs[name]) for name in defn.inputs)
    dynamic = {}
    for name in defn.inputs + defn.outputs:
        shape = defn.shapes[name]
        dynamic[name] = {axis: str(dim) for axis, dim in enumerate(shape) if isinstance(dim, str)}
    with torch.no_grad(), _traced_form(defn, precision, winograd, transforms_for):
        torch.onnx.export(
            defn.module, args, str(path), input_names=defn.inputs, output_names=defn.outputs,
            dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True, dynamo=False,
        )


def check_onnx_graph(path: Path) -> None:
    """onnx.checker and strict shape inference on the file."""
    onnx.checker.check_model(str(path))
    with tempfile.TemporaryDirectory() as tmp:
        onnx.shape_inference.infer_shapes_path(str(path), str(Path(tmp) / "inferred.onnx"), strict_mode=True)


def _ort_session(path: Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare_with_torch(defn: GraphDefinition, path: Path, cases: list[dict], threads: int | None,
                       report: GraphReport) -> None:
    """Run the ONNX graph in onnxruntime on each case's real inputs and compare
    with the PyTorch module's outputs; keep the worst error and the timings."""
    session = _ort_session(path, threads)
    for case in cases:
        feeds = {name: case["inputs"][name] for name in defn.inputs}
        t0 = time.perf_counter()
        got = session.run(defn.outputs, feeds)
        report.ort_ms = (time.perf_counter() - t0) * 1e3
        report.torch_ms = case["torch_ms"]
        for name, value in zip(defn.outputs, got):
            expected = case["outputs"][name]
            if value.shape != expected.shape:
                raise ExportError(f"graph {defn.name}: output {name} has shape {value.shape}, "
                                  f"PyTorch gives {expected.shape}")
            abs_err = float(np.max(np.abs(value.astype(np.float64) - expected)))
            scale = float(np.max(np.abs(expected))) or 1.0
            report.max_abs_error = max(report.max_abs_error, abs_err)
            report.rel_error = max(report.rel_error, abs_err / scale)


def write_entropy_tables(model: DCAE, path: Path) -> None:
    """The tables exactly as the model's buffers hold them (never recomputed)."""
    gc, eb = model.gaussian_conditional, model.entropy_bottleneck
    if gc.quantized_cdf.numel() == 0 or eb._quantized_cdf.numel() == 0:
        raise ExportError("the model's entropy tables are empty: call update() before exporting")
    arrays = {
        "gaussian_scale_table": gc.scale_table.float(),
        "gaussian_scale_bound": gc.lower_bound_scale.bound.float().reshape(()),
        "gaussian_cdfs": gc.quantized_cdf.int(),
        "gaussian_cdf_lengths": gc.cdf_length.int().reshape(-1),
        "gaussian_offsets": gc.offset.int().reshape(-1),
        "z_medians": eb._get_medians().detach().float().reshape(-1),
        "z_cdfs": eb._quantized_cdf.int(),
        "z_cdf_lengths": eb._cdf_length.int().reshape(-1),
        "z_offsets": eb._offset.int().reshape(-1),
    }
    with open(path, "wb") as f:
        np.savez(f, **{k: v.detach().cpu().numpy() for k, v in arrays.items()})


def tool_versions() -> dict:
    import compressai
    import onnxruntime

    from . import __version__

    return {"dcae-deploy": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "compressai": compressai.__version__,
            "numpy": np.__version__}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _tensor_specs(defn: GraphDefinition, names: list[str]) -> list[TensorSpec]:
    return [TensorSpec(name, "float32", list(defn.shapes[name])) for name in names]


def export_bundle(model: DCAE, out_dir: str | Path, precision: str = "fp32", entropy_precision: str = "fp32",
                  opset: int = DEFAULT_OPSET, source_checkpoint: str | Path | None = None,
                  preset: str | None = None, check_image=None, threads: int | None = None,
                  progress=print, quantize=None, winograd: bool = True, measure_margin: bool = True,
                  margin_images: list[np.ndarray] | None = None,
                  transforms_for: str = "onnxruntime",
                  measure_memory: bool = True) -> tuple[Manifest, list[GraphReport]]:
    """Write a bundle to `out_dir` (created; must not exist or be empty).

    `quantize(name, fp32_path, out_path)` is called for graphs whose policy is
    int8 (`dcae_deploy.export.calibrate.make_int8_quantizer` makes one); when it has a
    `report_json()`, that is stored in the bundle as int8_report.json. The bundle is built in a
    temporary sibling directory and renamed into place, so a failed export
    leaves nothing behind. `winograd=False` keeps the fp32 entropy graphs'
    wide convs plain (dcae_deploy.export.winograd). A bundle with fp32 entropy
    graphs records the model's portable margin (`dcae.margin.model_margin`),
    the default of its encoders. With `measure_margin`, how far the scales of
    the setups that run here stray is measured on `margin_images` (default:
    the check image) and recorded beside it, and the export fails if one strays
    half that margin or more (dcae_deploy.export.portable_margin).
    `transforms_for` ("onnxruntime" or "openvino") picks the image transforms'
    graph form for that runtime (`dcae_deploy.export.rewrites.quality_rewrites`); any
    backend runs either, the entropy graphs are the same in both. With
    `measure_memory`, the image transforms' working memory per pixel is
    measured (fresh onnxruntime processes, `dcae_deploy.runtime.memory`) and
    recorded, so runtimes size their tiles without measuring it themselves."""
    out_dir = Path(out_dir)
    quality_rewrites(transforms_for)  # an unknown target fails here, before any work
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"output directory {out_dir} exists and is not empty")
    model = model.eval()
    definitions = graph_definitions(model)
    policy = precision_policy(precision, entropy_precision, [d.name for d in definitions])
    if "int8" in policy.values() and quantize is None:
        raise ExportError("int8 needs calibration images: pass --calib DIR")

    progress(f"collecting real graph inputs at {', '.join(f'{h}x{w}' for h, w in CHECK_SIZES)}")
    cases_by_size = [reference_graph_io(model, definitions, pad_image(img)[0]) for img in _check_images(check_image)]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    reports = []
    try:
        graphs = {}
        for k, defn in enumerate(definitions, 1):
            report = GraphReport(defn.name, policy[defn.name])
            t0 = time.perf_counter()
            fp32_path = staging / f"{defn.name}.fp32.onnx"
            _onnx_export(defn, cases_by_size[0][defn.name]["inputs"], fp32_path, opset, report.precision,
                         winograd, transforms_for)
            check_onnx_graph(fp32_path)
            cases = [c[defn.name] for c in cases_by_size]
            compare_with_torch(defn, fp32_path, cases, threads, report)
            if report.rel_error > FP32_TOLERANCE:
                raise ExportError(f"graph {defn.name}: onnxruntime differs from PyTorch by {report.rel_error:.2e} "
                                  f"relative (limit {FP32_TOLERANCE:.0e})")
            final = staging / f"{defn.name}.onnx"
            if report.precision == "fp32":
                fp32_path.rename(final)
            else:
                if report.precision == "fp16":
                    convert_to_fp16(fp32_path, final)
                else:
                    quantize(defn.name, fp32_path, final)
                fp32_path.unlink()
                check_onnx_graph(final)
                fp32_error = report.rel_error
                report.max_abs_error = report.rel_error = 0.0
                compare_with_torch(defn, final, cases, threads, report)
                report.extra["fp32_rel_error"] = fp32_error
            report.export_seconds = time.perf_counter() - t0
            report.file_bytes = final.stat().st_size
            reports.append(report)
            graphs[defn.name] = GraphSpec(defn.name, final.name, sha256_file(final), report.precision,
                                          _tensor_specs(defn, defn.inputs), _tensor_specs(defn, defn.outputs))
            progress(f"[{k}/{len(definitions)}] {defn.name:<16} {report.precision:<5} "
                     f"{report.file_bytes / 1e6:7.1f} MB  err {report.rel_error:.1e}  {report.export_seconds:5.1f} s")

        write_entropy_tables(model, staging / ENTROPY_NAME)
        manifest = Manifest(
            model={"preset": preset or getattr(model, "preset", None), "config": model.config.to_dict()},
            source_checkpoint_sha256=sha256_file(source_checkpoint) if source_checkpoint else None,
            graphs=graphs, entropy_file=ENTROPY_NAME, entropy_sha256=sha256_file(staging / ENTROPY_NAME),
            precision=precision, entropy_precision=entropy_precision, tools={**tool_versions(), "opset": opset},
            int8_target=getattr(quantize, "target", None) if "int8" in policy.values() else None,
            int8_weight_bits=getattr(quantize, "weight_bits", None) if "int8" in policy.values() else None,
            rate_levels=dict(getattr(model, "rate_levels", None) or {}),
        )
        manifest.entropy_fingerprint = manifest.compute_entropy_fingerprint()
        margin = None
        if not manifest.reduced_precision_entropy:
            fingerprint = entropy_model_fingerprint(model)
            manifest.entropy_model_fingerprint = fingerprint.hex()
            # The model's own margin, as the reference computes it: the same
            # on every export of this model here, whatever is installed.
            computed = margin_record(model, fingerprint)
            margin = computed.pop("margin", None)
            manifest.portable = {"margin": margin, "model_margin": computed} if margin else {"model_margin": computed}
            progress(f"portable margin: the model's simulated float32 scales stray up to {computed['error']:.2e} "
                     f"(ln) from float64: " + (f"files get margin {margin:g}" if margin else
                                     "no margin covers that; files are refused elsewhere"))
        manifest.validate()
        manifest.write(staging)
        if measure_margin and margin:
            # The check runs the staged bundle, so the manifest is written
            # first and again with what it found.
            from .portable_margin import measure, outside_margin

            images = margin_images if margin_images is not None else _check_images(check_image)[-1:]
            found = manifest.portable["measurement"] = measure(model, staging, images, threads or 1,
                                                               checkpoint=source_checkpoint, progress=progress)
            outside = outside_margin(found, margin)
            if outside:
                raise ExportError(
                    "setups here stray half the model's portable margin or more from float64 ("
                    + ", ".join(f"{name} {error:.2e}" for name, error in outside.items())
                    + f", margin {margin:g}): their portable files would be refused elsewhere; "
                    "export with --no-margin-measure to write the bundle anyway")
            progress(f"portable margin: this machine's setups stray up to {max(found['vs_float64'].values()):.2e} "
                     f"(ln) from float64, within half the margin")
            manifest.validate()
            manifest.write(staging)
        if measure_memory:
            # Also run on the staged bundle, so after the manifest is written.
            from dcae_deploy.runtime.memory import measure_bytes_per_pixel

            manifest.bytes_per_pixel = measure_bytes_per_pixel(staging)
            progress("image transforms' working memory: " + ", ".join(
                f"{name} {value} bytes per pixel" for name, value in manifest.bytes_per_pixel.items()))
            manifest.validate()
            manifest.write(staging)
        (staging / "export_report.json").write_text(json.dumps(
            {"peak_rss_mb": peak_rss_mb(), "check_sizes": CHECK_SIZES, "winograd": winograd,
             "transforms_for": transforms_for,
             "graphs": [r.__dict__ for r in reports],
             # per graph, for dcae-bench's roofline (dcae_deploy.export.flops)
             "flops": graph_flops(definitions, cases_by_size)}, indent=1))
        if "int8" in policy.values() and hasattr(quantize, "report_json"):
            # the int8 graphs' error against fp32 on held-out crops (dcae_deploy.calibration.quantize)
            (staging / INT8_REPORT_NAME).write_text(quantize.report_json())
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest, reports


def summary_table(reports: list[GraphReport]) -> str:
    lines = [f"{'graph':<16} {'precision':<9} {'size MB':>8} {'max err (rel)':>14} {'torch ms':>9} "
             f"{'ort ms':>8} {'time s':>7}"]
    for r in reports:
        lines.append(f"{r.name:<16} {r.precision:<9} {r.file_bytes / 1e6:8.2f} {r.rel_error:14.2e} "
                     f"{r.torch_ms:9.1f} {r.ort_ms:8.1f} {r.export_seconds:7.1f}")
    total = sum(r.file_bytes for r in reports) / 1e6
    lines.append(f"{'total':<16} {'':<9} {total:8.2f}")
    return "\n".join(lines)
