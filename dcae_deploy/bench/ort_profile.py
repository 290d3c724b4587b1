"""Where a bundle graph's time goes in onnxruntime or OpenVINO: its profile by operator type and by node.

    python -m dcae_deploy.bench.ort_profile BUNDLE [--graph g_a --graph g_s] [--size 512x768] [--threads 2]
                                     [--runs 2] [--backend onnxruntime|openvino|openvino-bf16] [--out FILE.md]

Each graph is loaded with the runtime's own session options
(`OnnxRuntimeBackend._session_options`: all optimisations, the shared arena,
spinning as the codec has it) plus onnxruntime's profiler, fed real-shaped
inputs (a random image through the earlier graphs is not needed for timing:
random data of the graph's input shape, uint8-range for the image), run once
to warm up and `runs` times profiled. Printed (and written with --out): per
operator type the total ms per run, its share and node count; the slowest
nodes; and, for the kernels that do GEMM work (Conv, QLinearConv,
MatMul*, ConvInteger...), their share, which with the roofline table says
whether the time is in the GEMMs or around them (quantize / dequantize,
layout transposes, elementwise work).

With `--backend openvino` or `openvino-bf16` the graph is compiled as the
runtime's OpenVINO backend compiles it (`openvino_compile_config`, at the
given size) with OpenVINO's per-node counters on; "op type" is then the
executed node's type and kernel (e.g. `Convolution brgconv_avx512_amx_I8`),
so the table also says which nodes ran in int8, bf16 or f32.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

GEMM_OPS = ("Conv", "QLinearConv", "ConvInteger", "MatMul", "MatMulInteger", "MatMulIntegerToFloat",
            "QLinearMatMul", "FusedConv", "FusedMatMul", "Gemm", "NchwcConv", "ConvTranspose", "QGemm",
            "DynamicQuantizeMatMul")


def _shape_at(shape, size: tuple[int, int]) -> list[int]:
    """A graph input's shape with its named dimensions (H, W, h, w, zh, zw) at padded image size `size`."""
    height, width = size
    dims = {"H": height, "W": width, "h": height // 16, "w": width // 16, "zh": height // 64, "zw": width // 64}
    return [d if isinstance(d, int) else dims[d] for d in shape]


def _feeds(session, size: tuple[int, int], rng) -> dict:
    return {inp.name: rng.random(_shape_at(inp.shape, size), dtype=np.float32) for inp in session.get_inputs()}


def profile_graph(bundle: str, graph: str, size: tuple[int, int], threads: int | None, runs: int = 2) -> dict:
    from dcae_deploy.runtime.backends import OnnxRuntimeBackend
    from dcae_deploy.runtime.manifest import Manifest

    manifest = Manifest.read(bundle)
    spec = manifest.graphs[graph]
    backend = OnnxRuntimeBackend(threads)
    with tempfile.TemporaryDirectory() as tmp:
        options = backend._session_options(graph)
        session_plain = backend._ort.InferenceSession(str(Path(bundle) / spec.file), options,
                                                      providers=["CPUExecutionProvider"])
        feeds = _feeds(session_plain, size, np.random.default_rng(0))
        session_plain.run(None, feeds)  # warm-up of the arena and the kernels' packed weights
        del session_plain
        options = backend._session_options(graph)
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, graph)
        session = backend._ort.InferenceSession(str(Path(bundle) / spec.file), options,
                                                providers=["CPUExecutionProvider"])
        session.run(None, feeds)  # warm-up, profiled too but left out below
        for _ in range(runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    model_runs = [e for e in events if e.get("name") == "model_run"]
    start = model_runs[1]["ts"] if len(model_runs) > 1 else 0  # skip the warm-up run
    kernels = [(e["name"][: -len("_kernel_time")], e["args"].get("op_name", "?"), e["dur"]) for e in events
               if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start]
    run_ms = [e["dur"] / 1e3 for e in model_runs[1:]] or [e["dur"] / 1e3 for e in model_runs]
    return {"graph": graph, "precision": spec.precision, "size": list(size), "threads": threads, "runs": runs,
            **_summarise(kernels, runs, run_ms, lambda op: op in GEMM_OPS)}


def _summarise(kernels: list[tuple[str, str, float]], runs: int, run_ms: list[float], is_gemm) -> dict:
    """A profile's times from its (node, op type, microseconds) entries over `runs` runs: per op type and
    per node (slowest first), in all and in the GEMM op types (`is_gemm(op)`), in ms per run."""
    by_type: dict[str, dict] = defaultdict(lambda: {"us": 0.0, "nodes": set()})
    by_node: dict[str, dict] = defaultdict(lambda: {"us": 0.0, "op": ""})
    for node, op, us in kernels:
        by_type[op]["us"] += us
        by_type[op]["nodes"].add(node)
        by_node[node]["us"] += us
        by_node[node]["op"] = op
    return {
        "run_ms": float(np.median(run_ms)), "kernels_ms": sum(v["us"] for v in by_type.values()) / 1e3 / runs,
        "by_type": sorted(({"op": op, "ms": v["us"] / 1e3 / runs, "nodes": len(v["nodes"])}
                           for op, v in by_type.items()), key=lambda r: -r["ms"]),
        "nodes": sorted(({"node": n, "op": v["op"], "ms": v["us"] / 1e3 / runs} for n, v in by_node.items()),
                        key=lambda r: -r["ms"]),
        "gemm_ms": sum(v["us"] for op, v in by_type.items() if is_gemm(op)) / 1e3 / runs,
    }


OPENVINO_GEMM_TYPES = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "ConvolutionBackpropData")


def profile_graph_openvino(bundle: str, graph: str, size: tuple[int, int], threads: int | None, runs: int = 2,
                           backend: str = "openvino") -> dict:
    """As `profile_graph`, in OpenVINO's CPU plugin (`backend` "openvino" or "openvino-bf16", each graph in
    the precision that backend runs it in) with its per-node performance counters."""
    from dcae_deploy.runtime.backends import get_backend, openvino_compile_config
    from dcae_deploy.runtime.manifest import Manifest

    spec = Manifest.read(bundle).graphs[graph]
    openvino = get_backend(backend, threads)
    model = openvino._core.read_model(str(Path(bundle) / spec.file))
    rng = np.random.default_rng(0)
    feeds = {t.name: rng.random(_shape_at(t.shape, size), dtype=np.float32) for t in spec.inputs}
    model.reshape({name: list(array.shape) for name, array in feeds.items()})
    config = openvino_compile_config(openvino.graph_precision(spec), threads) | {"PERF_COUNT": True}
    request = openvino._core.compile_model(model, "CPU", config).create_infer_request()
    request.infer(feeds)  # warm-up
    kernels, run_ms = [], []
    for _ in range(runs):
        start = time.perf_counter()
        request.infer(feeds)
        run_ms.append((time.perf_counter() - start) * 1e3)
        kernels += [(info.node_name, f"{info.node_type} {info.exec_type}", info.real_time.total_seconds() * 1e6)
                    for info in request.profiling_info
                    if info.status == info.Status.EXECUTED and info.real_time.total_seconds() > 0]
    summary = _summarise(kernels, runs, run_ms, lambda op: op.split()[0] in OPENVINO_GEMM_TYPES)
    return {"graph": graph, "precision": spec.precision, "size": list(size), "threads": threads, "runs": runs,
            "backend": backend, **summary,
            "gemm_ops": sorted({t["op"].split()[0] for t in summary["by_type"]} & set(OPENVINO_GEMM_TYPES))}


def to_markdown(results: list[dict], cpu: str) -> str:
    lines = ["# Profiles of bundle graphs", "", f"CPU: {cpu}", ""]
    for r in results:
        total = r["kernels_ms"] or 1.0
        gemm_ops = r.get("gemm_ops") or sorted(set(GEMM_OPS) & {t["op"] for t in r["by_type"]})
        lines += [f"## {r['graph']} ({r['precision']}) in {r.get('backend', 'onnxruntime')}, "
                  f"{r['size'][0]}x{r['size'][1]}, {r['threads']} threads", "",
                  f"Run: {r['run_ms']:.1f} ms (median of {r['runs']} profiled runs); kernels {r['kernels_ms']:.1f} ms "
                  f"per run, of which GEMM kernels ({', '.join(gemm_ops)}"
                  f") {r['gemm_ms']:.1f} ms ({100 * r['gemm_ms'] / total:.0f} %).", "",
                  "| op type | ms per run | share | nodes |", "|---|---|---|---|"]
        lines += [f"| {t['op']} | {t['ms']:.1f} | {100 * t['ms'] / total:.1f} % | {t['nodes']} |" for t in r["by_type"]]
        lines += ["", "| slowest nodes | op | ms |", "|---|---|---|"]
        lines += [f"| {n['node']} | {n['op']} | {n['ms']:.1f} |" for n in r["nodes"][:15]]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    from .machine import cpu_description

    p = argparse.ArgumentParser(prog="python -m dcae_deploy.bench.ort_profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--graph", action="append", default=[], help="graph name (repeat; default g_a and g_s)")
    p.add_argument("--size", default="512x768", help="padded HxW (default 512x768, Kodak's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "openvino", "openvino-bf16"),
                   help="onnxruntime (default), or OpenVINO in f32 or with the image transforms in bf16")
    p.add_argument("--out", default=None, help="markdown file to write (JSON next to it)")
    args = p.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    graphs = args.graph or ["g_a", "g_s"]
    if args.backend == "onnxruntime":
        results = [profile_graph(args.bundle, g, size, args.threads, args.runs) for g in graphs]
    else:
        results = [profile_graph_openvino(args.bundle, g, size, args.threads, args.runs, args.backend)
                   for g in graphs]
    text = to_markdown(results, cpu_description())
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
