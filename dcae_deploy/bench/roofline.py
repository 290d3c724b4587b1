"""How close each stage runs to what this machine can do: FLOPs, achieved GFLOP/s, peak.

- FLOPs per graph come from the bundle's `export_report.json` (counted once at
  export by `dcae_deploy.export.flops`: nominal FLOPs of the PyTorch module, affine in
  the padded pixel count, so the count at each image's padded size is exact,
  not an extrapolation of a rate). The PyTorch setups run the same modules, so
  they use the same counts (the exported slice_params graphs hold the
  dictionary keys / values folded, which the reference recomputes per call:
  a few MFLOP more there, not counted).
- The peaks are measured here, at the bench's thread count, in onnxruntime on
  the CPU: a float32 MatMul (MLAS SGEMM) and a uint8 x int8 MatMulInteger
  (MLAS's integer GEMM, what the int8 bundles' QLinearConv and
  MatMulIntegerToFloat run on), each the best of several runs of one large
  GEMM (`measure_peaks`). `dcae-bench` measures them once per round, before
  the setups, and keeps the highest.
- Achieved = FLOPs of the stage / the stage's time; the fraction is against
  the int8 peak for a graph stored in int8 and the fp32 peak otherwise (fp16
  graphs too: onnxruntime runs most of them in float32 on the CPU). A graph
  that uses the exporter's Winograd convolutions (fp32 bundles' entropy
  graphs) does fewer multiplies than its nominal count: its achieved rate can
  pass the SGEMM peak, which then says so rather than being a measurement error.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

# The report key of each kind of peak (a graph's speed is compared with one of them: `peak_kind_of`).
PEAK_KEY = {"fp32": "fp32_gflops", "int8": "int8_gops", "bf16": "bf16_gflops"}
PEAK_KEYS = tuple(PEAK_KEY.values())
GEMM_SHAPE = (4096, 1024, 1024)  # M, K, N: the size of the model's big convs' GEMMs (rows x channels)
PEAK_METHOD = ("onnxruntime CPU, best of {runs} runs of one GEMM {m}x{k} @ {k}x{n}: float32 MatMul (MLAS SGEMM) "
               "and uint8 x int8 MatMulInteger (MLAS integer GEMM), intra-op threads {threads}")


def _gemm_model(kind: str, m: int, k: int, n: int) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "fp32":
        a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
        b = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "b")
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
    else:
        a = helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])
        y = helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])
        b = numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "b")
        zero = numpy_helper.from_array(np.array(128, np.uint8), "a_zero")
        node = helper.make_node("MatMulInteger", ["a", "b", "a_zero"], ["y"])
    inits = [b] + ([zero] if kind == "int8" else [])
    graph = helper.make_graph([node], f"gemm_{kind}", [a], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _rates(run, runs: int, flops: float) -> dict:
    """{"best", "median"} G(FL)OP/s of `runs` timed calls of `run` after one warm-up."""
    run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"best": flops / min(times) / 1e9, "median": flops / float(np.median(times)) / 1e9}


def measure_peaks(threads: int | None, runs: int = 12, shape: tuple[int, int, int] = GEMM_SHAPE) -> dict:
    """{"fp32_gflops", "int8_gops", "method", ...}: this machine's GEMM peaks in onnxruntime."""
    import onnxruntime as ort

    m, k, n = shape
    flops = 2.0 * m * k * n
    rng = np.random.default_rng(1)
    feeds = {"fp32": rng.standard_normal((m, k)).astype(np.float32),
             "int8": rng.integers(0, 256, (m, k), dtype=np.uint8)}
    out = {}
    for kind, feed in feeds.items():
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(_gemm_model(kind, m, k, n), options, providers=["CPUExecutionProvider"])
        out[kind] = _rates(lambda: session.run(None, {"a": feed}), runs, flops)  # noqa: B023 - called at once
    peaks = {"fp32_gflops": out["fp32"]["best"], "int8_gops": out["int8"]["best"],
             "fp32_gflops_median": out["fp32"]["median"], "int8_gops_median": out["int8"]["median"],
             "threads": threads, "shape": list(shape),
             "method": PEAK_METHOD.format(runs=runs, m=m, k=k, n=n, threads=threads or "library default")}
    bf16 = measure_bf16_peak(threads, runs, shape)
    if bf16:
        peaks.update(bf16_gflops=bf16["best"], bf16_gflops_median=bf16["median"],
                     method=peaks["method"] + BF16_PEAK_METHOD)
    return peaks


BF16_PEAK_METHOD = "; bf16: the float32 MatMul in OpenVINO's CPU plugin with inference precision bf16"


def measure_bf16_peak(threads: int | None, runs: int, shape: tuple[int, int, int]) -> dict | None:
    """{"best", "median"} GFLOP/s of the fp32 GEMM run in bf16 by OpenVINO (AMX or AVX512-BF16 kernels: what
    the openvino-bf16 backends run g_a, h_a and g_s on), or None where OpenVINO or bf16 is missing."""
    try:
        import openvino
    except ImportError:
        return None
    core = openvino.Core()
    if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return None
    from dcae_deploy.runtime.backends import openvino_compile_config

    m, k, n = shape
    compiled = core.compile_model(core.read_model(_gemm_model("fp32", m, k, n), b""), "CPU",
                                  openvino_compile_config("bf16", threads))
    request = compiled.create_infer_request()
    feed = {"a": np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)}
    return _rates(lambda: request.infer(feed), runs, 2.0 * m * k * n)


def best_peaks(measured: list[dict]) -> dict | None:
    """The highest of several `measure_peaks` results (one per round), with every round's values."""
    if not measured:
        return None
    best = dict(max(measured, key=lambda p: p["fp32_gflops"]))
    best["int8_gops"] = max(p["int8_gops"] for p in measured)
    if all("bf16_gflops" in p for p in measured):
        best["bf16_gflops"] = max(p["bf16_gflops"] for p in measured)
    best["rounds"] = [{key: p[key] for key in PEAK_KEYS if key in p} for p in measured]
    return best


def bundle_flops(bundle_path: str) -> dict | None:
    """The bundle's per-graph FLOPs (`dcae_deploy.export.flops.graph_flops`), or None for a bundle exported before they
    were counted."""
    path = Path(bundle_path) / "export_report.json"
    try:
        return json.loads(path.read_text()).get("flops")
    except (OSError, ValueError):
        return None


def padded_sizes(images) -> list[tuple[int, int]]:
    from PIL import Image

    from dcae_deploy.runtime.geometry import padded_size

    sizes = []
    for path in images:
        with Image.open(path) as img:
            width, height = img.size
        sizes.append(tuple(padded_size(height, width)))
    return sizes


def stage_gflop(flops: dict, sizes: list[tuple[int, int]]) -> dict:
    """{graph: GFLOP, mean over the images' padded sizes}."""
    from dcae_deploy.export.flops import flops_at

    return {name: float(np.mean([flops_at(entry, h, w) for h, w in sizes])) / 1e9
            for name, entry in flops["graphs"].items()}


def graph_precisions(setup) -> dict:
    """{graph: "int8" | "fp32" | "fp16"} of a setup (a dict from the report): the bundle's graphs, or fp32
    for the PyTorch reference."""
    if not setup.get("bundle_path"):
        return {}
    from dcae_deploy.runtime.manifest import Manifest

    return {name: spec.precision for name, spec in Manifest.read(setup["bundle_path"]).graphs.items()}


def peak_kind_of(precision: str, graph: str, backend: str | None, peaks: dict | None) -> str:
    """Which peak a graph's speed is measured against: "int8" for a graph stored in int8, "bf16" for an
    image transform that the backend runs in bf16 (where the bf16 peak was measured), "fp32" otherwise."""
    from dcae_deploy.runtime.backends import BF16_TRANSFORM_BACKENDS
    from dcae_deploy.runtime.manifest import is_entropy_graph

    if precision == "int8":
        return "int8"
    if backend in BF16_TRANSFORM_BACKENDS and not is_entropy_graph(graph) and (peaks or {}).get("bf16_gflops"):
        return "bf16"
    return "fp32"


def roofline(setups: list[dict], bundles: list, images, peaks: dict | None) -> dict | None:
    """The report's "roofline": FLOPs per stage at these images' sizes, and per setup, direction (encode /
    decode) and stage the achieved GFLOP/s and its fraction of the peak that applies. None when no bundle
    records FLOPs."""
    by_label = {}
    for b in bundles:
        flops = bundle_flops(b.path)
        if flops:
            by_label[b.label] = flops
    if not by_label:
        return None
    sizes = padded_sizes(images)
    first = next(iter(by_label))
    out = {"peaks": peaks, "flops_method": by_label[first]["method"], "padded_sizes": [list(s) for s in sizes],
           "gflop": stage_gflop(by_label[first], sizes), "flops_from_bundle": first, "setups": {}}
    for s in setups:
        speed = s.get("speed")
        if not speed:
            continue
        gflop = stage_gflop(by_label[s["bundle"]], sizes) if s.get("bundle") in by_label else out["gflop"]
        precisions = graph_precisions(s)
        rows = {}
        for direction in ("encode", "decode"):  # h_s and the slices run in both, timed apart
            stages = speed["stages_ms"][direction]
            for name, g in gflop.items():
                ms = stages.get(name)
                if not ms:
                    continue
                precision = precisions.get(name, "fp32")
                peak_kind = peak_kind_of(precision, name, s.get("backend"), peaks)
                achieved = g / (ms / 1e3)
                peak = (peaks or {}).get(PEAK_KEY[peak_kind])
                rows.setdefault(direction, {})[name] = {
                    "gflop": g, "ms": ms, "gflops": achieved, "precision": precision, "peak": peak_kind,
                    "fraction_of_peak": achieved / peak if peak else None}
        out["setups"][s["name"]] = rows
    return out


def main_row(rows: dict, graph: str) -> dict | None:
    """A graph's row where it mainly runs: g_s in the decoder, every other graph in the encoder."""
    first, second = ("decode", "encode") if graph == "g_s" else ("encode", "decode")
    return (rows.get(first) or {}).get(graph) or (rows.get(second) or {}).get(graph)


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m dcae_deploy.bench.roofline",
                                description="measure this machine's fp32 / int8 GEMM peaks in onnxruntime")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    print(json.dumps(measure_peaks(args.threads), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
