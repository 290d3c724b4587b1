"""FLOPs counted at export (dcae_deploy.export.flops), the GEMM peaks and the roofline of dcae-bench's report."""
from __future__ import annotations

import json

import pytest

from dcae_deploy.export.flops import count_flops, flops_at


def _shapes(defn, sizes: dict) -> list:
    return [[sizes.get(d, d) for d in defn.shapes[name]] for name in defn.inputs]


def _sizes(height: int, width: int) -> dict:
    return {"H": height, "W": width, "h": height // 16, "w": width // 16, "zh": height // 64, "zw": width // 64}


def test_export_report_records_flops_that_scale_exactly_with_the_padded_size(tiny_model, tiny_bundle):
    from dcae_deploy.export.graphs import graph_definitions
    from dcae_deploy.runtime.manifest import graph_order

    flops = json.loads((tiny_bundle / "export_report.json").read_text())["flops"]
    assert list(flops["graphs"]) == graph_order(tiny_model.num_slices)
    assert flops["padded_sizes"] == [[256, 256], [384, 256]]
    for defn in graph_definitions(tiny_model):
        entry = flops["graphs"][defn.name]
        assert entry["256x256"] > 0 and entry["per_padded_pixel"] > 0
        # a third size, counted: the affine form is exact, not an estimate
        assert flops_at(entry, 512, 640) == pytest.approx(count_flops(defn.module, _shapes(defn, _sizes(512, 640))),
                                                          rel=1e-12)


def test_official_g_a_and_g_s_are_250_gflop_at_kodak_size():
    import torch

    from dcae.model import DCAE

    with torch.device("meta"):
        model = DCAE("dcae")
    defs = {d.name: d for d in graph_definitions_meta(model)}
    for name in ("g_a", "g_s"):
        assert count_flops(defs[name].module, _shapes(defs[name], _sizes(512, 768))) / 1e9 == \
            pytest.approx(249.676, abs=1e-3)


def graph_definitions_meta(model):
    """The rate / quality graphs of a model on the meta device (no weights, no slice graphs, which fold
    the dictionary from real weights)."""
    from dcae_deploy.export.graphs import DecoderSynthesis, EncoderAnalysis, GraphDefinition

    return [GraphDefinition("g_a", EncoderAnalysis(model), ["x"], ["y"], {"x": [1, 3, "H", "W"]}),
            GraphDefinition("g_s", DecoderSynthesis(model), ["y_hat"], ["x_hat"],
                            {"y_hat": [1, model.config.M, "h", "w"]})]


def test_gemm_peaks_are_measured_in_onnxruntime():
    from dcae_deploy.bench.roofline import best_peaks, measure_peaks

    peaks = [measure_peaks(1, runs=2, shape=(128, 128, 128)) for _ in range(2)]
    for p in peaks:
        assert p["fp32_gflops"] > 0 and p["int8_gops"] > 0 and p["threads"] == 1
        assert "MatMulInteger" in p["method"]
    best = best_peaks(peaks)
    assert best["fp32_gflops"] == max(p["fp32_gflops"] for p in peaks)
    assert best["int8_gops"] == max(p["int8_gops"] for p in peaks) and len(best["rounds"]) == 2
    assert best_peaks([]) is None


def test_bf16_peak_is_measured_in_openvino_where_the_cpu_has_bf16():
    import openvino

    from dcae_deploy.bench.roofline import best_peaks, measure_bf16_peak, measure_peaks

    has_bf16 = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    bf16 = measure_bf16_peak(1, 2, (128, 128, 128))
    assert (bf16 is not None) == has_bf16
    peaks = measure_peaks(1, runs=2, shape=(128, 128, 128))
    assert ("bf16_gflops" in peaks) == has_bf16 and ("bf16" in peaks["method"]) == has_bf16
    if has_bf16:
        assert bf16["best"] >= bf16["median"] > 0
        assert best_peaks([peaks, peaks])["bf16_gflops"] == peaks["bf16_gflops"]


def test_roofline_rows_and_report_tables(tiny_bundle, kodak_crop, tmp_path):
    from PIL import Image

    from dcae_deploy.bench.report import _roofline, _stage_table
    from dcae_deploy.bench.roofline import roofline
    from dcae_deploy.bench.setups import bundle_infos

    image = tmp_path / "a.png"
    Image.fromarray(kodak_crop("kodim05", 200, 300)).save(image)  # pads to 256 x 384
    bundles = bundle_infos([str(tiny_bundle)])
    stages = {"encode": {"g_a": 10.0, "h_a": 1.0, "h_s": 2.0}, "decode": {"g_s": 20.0, "h_s": 4.0}}
    speed = {"stages_ms": stages, "encode_ms_mean_of_medians": 12.0, "decode_ms_mean_of_medians": 21.0}
    setups = [{"name": "torch", "bundle": None, "bundle_path": None, "speed": speed},
              {"name": "onnxruntime:bundle", "bundle": "bundle", "bundle_path": str(tiny_bundle), "speed": speed}]
    peaks = {"fp32_gflops": 100.0, "int8_gops": 400.0, "method": "m", "rounds": [{"fp32_gflops": 100.0,
                                                                                "int8_gops": 400.0}]}
    roof = roofline(setups, bundles, [image], peaks)
    flops = json.loads((tiny_bundle / "export_report.json").read_text())["flops"]["graphs"]
    assert roof["padded_sizes"] == [[256, 384]]
    assert roof["gflop"]["g_a"] == pytest.approx(flops_at(flops["g_a"], 256, 384) / 1e9)
    row = roof["setups"]["onnxruntime:bundle"]["encode"]["g_a"]
    assert row["gflops"] == pytest.approx(roof["gflop"]["g_a"] / 0.010)
    assert row["peak"] == "fp32" and row["fraction_of_peak"] == pytest.approx(row["gflops"] / 100.0)
    # only the stages that were timed, in the direction they were timed in
    assert set(roof["setups"]["torch"]["encode"]) == {"g_a", "h_a", "h_s"}
    assert set(roof["setups"]["torch"]["decode"]) == {"g_s", "h_s"}
    h_s = {d: roof["setups"]["torch"][d]["h_s"]["gflops"] for d in ("encode", "decode")}
    assert h_s["encode"] == pytest.approx(2 * h_s["decode"])  # each direction's own time

    # An image transform that the backend runs in bf16 is measured against the bf16 peak, where there is
    # one; its entropy graphs against the fp32 peak.
    bf16_setup = {"name": "openvino-bf16:bundle", "backend": "openvino-bf16", "bundle": "bundle",
                  "bundle_path": str(tiny_bundle), "speed": speed}
    rows = roofline([bf16_setup], bundles, [image], {**peaks, "bf16_gflops": 200.0})["setups"][bf16_setup["name"]]
    assert rows["encode"]["g_a"]["peak"] == "bf16" and rows["decode"]["g_s"]["peak"] == "bf16"
    assert rows["encode"]["g_a"]["fraction_of_peak"] == pytest.approx(row["gflops"] / 200.0)
    assert rows["encode"]["h_s"]["peak"] == "fp32"
    no_bf16_peak = roofline([bf16_setup], bundles, [image], peaks)["setups"][bf16_setup["name"]]
    assert no_bf16_peak["encode"]["g_a"]["peak"] == "fp32"
    bf16_peaks = {**peaks, "bf16_gflops": 200.0, "rounds": [{**peaks["rounds"][0], "bf16_gflops": 200.0}]}
    bf16_report = {"setups": [{**bf16_setup, "available": True}],
                   "roofline": roofline([bf16_setup], bundles, [image], bf16_peaks)}
    bf16_text = "\n".join(_roofline(bf16_report))
    assert "**bf16 200 GFLOP/s**" in bf16_text and "bf16 200)" in bf16_text and "% bf16" in bf16_text

    report = {"setups": [{**s, "available": True} for s in setups], "roofline": roof}
    table = "\n".join(_stage_table(report, "encode"))
    assert "| stage | GFLOP |" in table and "GFLOP/s" in table and "% fp32" in table
    text = "\n".join(_roofline(report))
    assert "fp32 100 GFLOP/s" in text and "| g_a |" in text
    assert f"| g_s | {roof['gflop']['g_s']:.2f} | 20.0 ms, " in text  # g_s where it runs: the decoder
    assert "Not available" in "\n".join(_roofline({"setups": [], "roofline": None}))


def test_openvino_profile_names_each_kernel_and_its_gemm_share(tiny_bundle):
    """The OpenVINO profile of g_a: per executed node its type and kernel,
    the GEMM nodes among them, and per-node times that account for the run."""
    from dcae_deploy.bench.ort_profile import OPENVINO_GEMM_TYPES, profile_graph_openvino, to_markdown

    result = profile_graph_openvino(str(tiny_bundle), "g_a", (128, 192), threads=1, runs=2)
    assert result["backend"] == "openvino" and result["graph"] == "g_a"
    assert all(len(t["op"].split()) == 2 for t in result["by_type"])  # "<node type> <kernel>"
    assert {"Convolution", "FullyConnected"} & set(result["gemm_ops"])  # g_a's convs and Linears
    assert set(result["gemm_ops"]) <= set(OPENVINO_GEMM_TYPES)
    assert 0 < result["gemm_ms"] < result["kernels_ms"]
    assert sum(t["ms"] for t in result["by_type"]) == pytest.approx(result["kernels_ms"])
    assert result["kernels_ms"] > 0.3 * result["run_ms"]
    assert "in openvino, 128x192, 1 threads" in to_markdown([result], "cpu")
