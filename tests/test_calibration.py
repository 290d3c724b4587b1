"""Calibration and INT8: crops, recorded graph inputs, the cache, QDQ graphs,
an int8 bundle end to end (API and CLI), and int8 round trips."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from dcae_deploy.calibration.cache import RecordCache
from dcae_deploy.calibration.images import check_crop_size, list_images, sample_crops, split_files
from dcae_deploy.calibration.quantize import SampleReader, float_nodes, policy_for, quantize_graph
from dcae_deploy.runtime.manifest import Manifest, is_entropy_graph

DATA = Path(__file__).parent / "data"

# Held-out SQNR (dB) of each int8 graph output against its fp32 graph, measured
# on the tiny golden-weight model with these crops (4 calibration crops, 2
# held-out, minmax, onnxruntime 1.32): g_a y 32.2, h_a z 33.3, g_s x_hat 27.8
# (PSNR of the clamped image 24.9); with entropy precision "same", h_s 34.0,
# slice_params mu 29.2 to 31.6, scale 36 to 38, slice_lrp 55. The bounds
# leave about 4 dB of margin. (The golden weights are random, not trained:
# on a trained model the same graphs measure 36 to 40 dB.)
MIN_SQNR_DB = {"g_a": 28.0, "h_a": 29.0, "g_s": 24.0}
MIN_SQNR_DB_ENTROPY = 25.0
MIN_XHAT_PSNR_DB = 21.0
CALIB_COUNT, HOLDOUT = 4, 2


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    """Five training-like photos (crops of Kodak images), nested, in the three formats."""
    from PIL import Image

    root = tmp_path_factory.mktemp("calib")
    (root / "nested" / "deeper").mkdir(parents=True)
    targets = {"kodim01": "a.png", "kodim02": "nested/b.jpg", "kodim03": "nested/deeper/c.tiff",
               "kodim04": "d.PNG", "kodim05": "nested/e.png"}
    for k, (name, target) in enumerate(targets.items()):
        pixels = np.asarray(Image.open(DATA / "kodak" / f"{name}.png").convert("RGB"))
        Image.fromarray(pixels[40 * k : 40 * k + 320, 64 * k : 64 * k + 384]).save(root / target, quality=95)
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def recorded(tiny_model, calib_dir, tmp_path_factory):
    from dcae_deploy.export.calibrate import recorded_inputs

    cache = tmp_path_factory.mktemp("calib_cache")
    calibration, heldout, info = recorded_inputs(tiny_model, calib_dir, count=CALIB_COUNT, holdout=HOLDOUT,
                                                 seed=0, cache_dir=cache)
    return {"calibration": calibration, "heldout": heldout, "info": info, "cache": cache}


# ---- images ------------------------------------------------------------------------------

def test_list_images_is_recursive_sorted_and_filters_formats(calib_dir):
    files = [p.relative_to(calib_dir).as_posix() for p in list_images(calib_dir)]
    assert files == ["a.png", "d.PNG", "nested/b.jpg", "nested/deeper/c.tiff", "nested/e.png"]


def test_crops_are_uint8_of_the_asked_size_and_deterministic(calib_dir):
    files = list_images(calib_dir)
    first = sample_crops(files, 7, calib_dir, (256, 256), seed=3, progress=False)
    again = sample_crops(files, 7, calib_dir, (256, 256), seed=3, progress=False)
    other = sample_crops(files, 7, calib_dir, (256, 256), seed=4, progress=False)
    assert len(first) == 7
    for a, b in zip(first, again):
        assert a.pixels.dtype == np.uint8 and a.pixels.shape == (256, 256, 3)
        assert (a.source, a.top, a.left) == (b.source, b.top, b.left)
        np.testing.assert_array_equal(a.pixels, b.pixels)
    assert [(c.source, c.top, c.left) for c in first] != [(c.source, c.top, c.left) for c in other]
    # round-robin over the images: 7 crops from 5 images use every image
    assert {c.source for c in first} == {p.relative_to(calib_dir).as_posix() for p in files}
    # a crop is the image's pixels at its window
    from dcae_deploy.runtime.imaging import load_image

    crop = first[0]
    whole = load_image(calib_dir / crop.source)
    np.testing.assert_array_equal(crop.pixels, whole[crop.top : crop.top + 256, crop.left : crop.left + 256])
    x = crop.model_input()
    assert x.dtype == np.float32 and x.shape == (1, 3, 256, 256) and 0.0 <= x.min() and x.max() <= 1.0


def test_images_smaller_than_the_crop_are_used_whole_and_padded(calib_dir):
    crops = sample_crops(list_images(calib_dir), 2, calib_dir, (384, 512), progress=False)
    for c in crops:
        assert c.pixels.shape == (320, 384, 3)
        assert c.model_input().shape == (1, 3, 384, 384)


def test_crop_sizes_follow_the_padding_rule():
    assert check_crop_size((256, 384)) == (256, 384)
    for bad in [(128, 256), (200, 256), (256, 300)]:
        with pytest.raises(ValueError, match="multiple of 128"):
            check_crop_size(bad)


def test_held_out_images_are_disjoint_from_calibration_images(calib_dir):
    files = list_images(calib_dir)
    calib, held = split_files(files, holdout=2, seed=0)
    assert held and calib and not set(calib) & set(held) and sorted(calib + held) == files
    assert split_files(files, 2, 0) == (calib, held)


# ---- recorded inputs, reader, cache ----------------------------------------------------

def test_records_hold_every_graphs_real_inputs(recorded, tiny_model):
    cfg = tiny_model.config
    c, h = cfg.slice_channels, 256 // 16
    assert len(recorded["calibration"]) == CALIB_COUNT and len(recorded["heldout"]) == HOLDOUT
    record = recorded["calibration"][0]
    assert record["g_a"]["x"].shape == (1, 3, 256, 256)
    assert record["h_a"]["y"].shape == (1, cfg.M, h, h)
    assert record["g_s"]["y_hat"].shape == (1, cfg.M, h, h)
    assert record["slice_params_2"]["y_hat_prev"].shape == (1, 2 * c, h, h)
    # slice graphs see the decoded y_hat of earlier slices, as the codec does
    last = cfg.num_slices - 1
    np.testing.assert_array_equal(record[f"slice_params_{last}"]["y_hat_prev"],
                                  record["g_s"]["y_hat"][:, : c * last])
    assert recorded["info"]["heldout_disjoint"]


def test_reader_yields_float32_inputs_in_order_and_rewinds(recorded):
    samples = [r["slice_params_1"] for r in recorded["calibration"]]
    names = ["latent_scales", "latent_means", "y_hat_prev"]
    reader = SampleReader(samples, names)
    first = list(reader)
    assert len(first) == len(reader) == CALIB_COUNT
    for got, sample in zip(first, samples):
        assert sorted(got) == sorted(names)
        for name in names:
            assert got[name].dtype == np.float32 and got[name].flags.c_contiguous
            np.testing.assert_array_equal(got[name], sample[name])
    assert reader.get_next() is None
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["y_hat_prev"], first[0]["y_hat_prev"])
    with pytest.raises(ValueError, match="lack inputs"):
        SampleReader(samples, ["support"])


def test_second_collection_comes_from_the_cache(recorded, tiny_model, calib_dir, monkeypatch):
    import dcae_deploy.export.calibrate as calibrate

    assert recorded["info"]["cache_hit"] is False

    def must_not_run(*args, **kwargs):
        raise AssertionError("recollected although the cache holds these crops")

    monkeypatch.setattr(calibrate, "collect_graph_inputs", must_not_run)
    calibration, heldout, info = calibrate.recorded_inputs(tiny_model, calib_dir, count=CALIB_COUNT,
                                                           holdout=HOLDOUT, seed=0, cache_dir=recorded["cache"])
    assert info["cache_hit"] is True
    for got, want in zip(calibration + heldout, recorded["calibration"] + recorded["heldout"]):
        for graph in want:
            for name in want[graph]:
                np.testing.assert_array_equal(got[graph][name], want[graph][name])
    # another seed picks other crops: a miss, so it collects
    with pytest.raises(AssertionError, match="recollected"):
        calibrate.recorded_inputs(tiny_model, calib_dir, count=CALIB_COUNT, holdout=HOLDOUT, seed=1,
                                  cache_dir=recorded["cache"])


def test_a_half_written_cache_entry_is_a_miss(tmp_path):
    cache = RecordCache(tmp_path, "k")
    cache.save({"calibration": [{"g": {"x": np.ones(3, np.float32)}}]})
    assert cache.load("calibration")[0]["g"]["x"].tolist() == [1, 1, 1]
    (cache.path / "meta.json").unlink()
    assert cache.load("calibration") is None


# ---- quantising graphs ---------------------------------------------------------------------

def _ops(path) -> dict[str, int]:
    model = onnx.load(str(path))
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _dequantized_inputs(path) -> dict[str, bool]:
    """node name -> whether its first input comes from a DequantizeLinear."""
    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    return {n.name: bool(n.input) and n.input[0] in producer and producer[n.input[0]].op_type == "DequantizeLinear"
            for n in model.graph.node}


def _optimized_ops(path, tmp_path) -> dict[str, int]:
    """Op counts of the graph onnxruntime actually runs (after its fusions)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return _ops(tmp_path / "optimized.onnx")


@pytest.mark.parametrize("graph,target", [("g_a", "onnxruntime"), ("slice_params_1", "onnxruntime"),
                                          ("g_a", "tensorrt")])
@pytest.mark.slow
def test_int8_graph_is_qdq_keeps_the_policy_float_and_runs_at_other_sizes(graph, target, recorded, tiny_bundle,
                                                                          tmp_path):
    fp32 = tiny_bundle / f"{graph}.onnx"
    out = tmp_path / f"{graph}.int8.onnx"
    result = quantize_graph(fp32, out, [r[graph] for r in recorded["calibration"]], "minmax",
                            policy=policy_for(graph), target=target)
    ops = _ops(out)
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    assert 0 < result.quantized_nodes < result.weighted_nodes
    model = onnx.load(str(out))
    inits = {t.name: t for t in model.graph.initializer}
    zero_points = [onnx.numpy_helper.to_array(inits[n.input[2]]) for n in model.graph.node
                   if n.op_type == "QuantizeLinear"]
    optimized = _optimized_ops(out, tmp_path)
    integer_kernels = sum(optimized.get(op, 0) for op in ("QLinearConv", "QLinearMatMul", "QGemm",
                                                          "MatMulIntegerToFloat"))
    if target == "tensorrt":
        # zero points 0 (symmetric) and int8: what TensorRT's explicit
        # quantisation takes; onnxruntime cannot fuse its convs (float biases)
        # into integer kernels
        assert all(zp.dtype == np.int8 and not zp.any() for zp in zero_points)
        assert optimized.get("QLinearConv", 0) == 0
    else:
        # uint8 activations with real zero points, and onnxruntime runs the
        # weighted ops as integer kernels (not dequantise + float kernel)
        assert all(zp.dtype == np.uint8 for zp in zero_points) and any(zp.any() for zp in zero_points)
        assert integer_kernels >= result.quantized_nodes - optimized.get("Conv", 0) - optimized.get("MatMul", 0)
        assert optimized.get("QLinearConv", 0) > 0 and optimized.get("MatMulIntegerToFloat", 0) > 0
        # MatMul outputs stay float (no Q right after a MatMul); depthwise convs float
        producers = {o: n.op_type for n in model.graph.node for o in n.output}
        assert not [n for n in model.graph.node if n.op_type == "QuantizeLinear"
                    and producers.get(n.input[0]) == "MatMul"]
        assert result.float_nodes["depthwise"]
    dequantized = _dequantized_inputs(out)
    kept = result.float_nodes
    assert kept["last_layer"] and kept["attention_scores"]
    for name in kept["ops"] + kept["attention_scores"] + kept["last_layer"] + kept.get("depthwise", []):
        assert not dequantized.get(name, False), f"{name} should stay float"
    # dynamic H, W survive quantisation: run at the calibration size and at
    # one and a half times its height (real values, the lower half repeated)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    sample = recorded["heldout"][0][graph]
    for feeds in (sample, {k: np.concatenate([a, a[:, :, a.shape[2] // 2 :]], axis=2) for k, a in sample.items()}):
        got, want = session.run(None, feeds), reference.run(None, feeds)
        assert [g.shape for g in got] == [w.shape for w in want]
        assert all(np.isfinite(g).all() for g in got)


@pytest.mark.slow
def test_linear_layers_run_as_int8_matmuls_with_their_bias_fused(recorded, tiny_bundle, tmp_path, monkeypatch):
    """onnxruntime form: every Linear of g_a with a bias becomes one
    MatMulIntegerToFloat that adds it (no separate Add over its output),
    computing what the QDQ graph before the fusion computes, on real held-out
    inputs; those without one (window attention's k and v) stay as they are."""
    import dcae_deploy.calibration.quantize as quantize
    from dcae_deploy.calibration.fusions import MS_DOMAIN, fuse_matmul_bias

    fp32 = tiny_bundle / "g_a.onnx"
    samples = [r["g_a"] for r in recorded["calibration"]]
    monkeypatch.setattr(quantize, "fuse_matmul_bias", lambda model: 0)
    quantize_graph(fp32, tmp_path / "unfused.onnx", samples, policy=policy_for("g_a"))
    monkeypatch.undo()
    result = quantize_graph(fp32, tmp_path / "fused.onnx", samples, policy=policy_for("g_a"))
    unfused, fused = onnx.load(str(tmp_path / "unfused.onnx")), onnx.load(str(tmp_path / "fused.onnx"))

    def linears(model, with_bias: bool):
        """int8 Linears (DQ(x) @ DQ(constant W)) whose only consumer is (not) an Add."""
        producers = {o: n for n in model.graph.node for o in n.output}
        users: dict[str, list] = {}
        for node in model.graph.node:
            for name in node.input:
                users.setdefault(name, []).append(node.op_type)
        constants = {t.name for t in model.graph.initializer}
        return [n for n in model.graph.node if n.op_type == "MatMul"
                and all(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in n.input)
                and producers[n.input[1]].input[0] in constants
                and (users.get(n.output[0]) == ["Add"]) == with_bias]

    biased = linears(unfused, with_bias=True)
    fused_nodes = [n for n in fused.graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert biased and len(fused_nodes) == len(biased)
    assert all(n.domain == MS_DOMAIN and len(n.input) == 7 and n.input[6] for n in fused_nodes)
    assert _ops(tmp_path / "unfused.onnx")["Add"] - _ops(tmp_path / "fused.onnx")["Add"] == len(biased)
    assert not linears(fused, with_bias=True)
    # the window attention's k and v Linears have no bias (dcae_deploy.export.rewrites):
    # onnxruntime makes those MatMulIntegerToFloat itself
    assert len(linears(fused, with_bias=False)) == len(linears(unfused, with_bias=False)) > 0
    assert result.quantized_nodes >= len(biased)
    assert fuse_matmul_bias(fused) == 0  # nothing left to fuse

    sample = recorded["heldout"][0]["g_a"]
    want = ort.InferenceSession(str(tmp_path / "unfused.onnx"), providers=["CPUExecutionProvider"]).run(None, sample)
    got = ort.InferenceSession(str(tmp_path / "fused.onnx"), providers=["CPUExecutionProvider"]).run(None, sample)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4 * float(np.abs(want[0]).max()))


def test_gelus_after_quantised_convs_run_as_one_kernel(recorded, tiny_bundle, tmp_path, monkeypatch):
    """onnxruntime form: an erf GELU whose input is a quantised conv's output
    (the slice heads) becomes one com.microsoft Gelu, so that onnxruntime's
    optimized graph keeps no Erf (its own fusion misses these), computing what
    the graph before the fusion computes, on real held-out inputs."""
    import dcae_deploy.calibration.quantize as quantize
    from dcae_deploy.calibration.fusions import MS_DOMAIN, fuse_gelu

    name = "slice_params_1"
    fp32 = tiny_bundle / f"{name}.onnx"
    samples = [r[name] for r in recorded["calibration"]]
    monkeypatch.setattr(quantize, "fuse_gelu", lambda model: 0)
    quantize_graph(fp32, tmp_path / "unfused.onnx", samples, policy=policy_for(name))
    monkeypatch.undo()
    quantize_graph(fp32, tmp_path / "fused.onnx", samples, policy=policy_for(name))

    def optimized_ops(path):
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)

    erfs = _ops(tmp_path / "unfused.onnx")["Erf"]
    gelus = [n for n in onnx.load(str(tmp_path / "fused.onnx")).graph.node if n.op_type == "Gelu"]
    assert erfs > 0 and len(gelus) == erfs and all(n.domain == MS_DOMAIN for n in gelus)
    assert optimized_ops(tmp_path / "unfused.onnx")["Erf"] > 0  # what the fusion is for
    assert optimized_ops(tmp_path / "fused.onnx")["Erf"] == 0
    assert fuse_gelu(onnx.load(str(tmp_path / "fused.onnx"))) == 0  # nothing left to fuse

    sample = recorded["heldout"][0][name]
    want = ort.InferenceSession(str(tmp_path / "unfused.onnx"), providers=["CPUExecutionProvider"]).run(None, sample)
    got = ort.InferenceSession(str(tmp_path / "fused.onnx"), providers=["CPUExecutionProvider"]).run(None, sample)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(np.abs(w).max()))


def test_float_node_selection_on_an_exported_graph(tiny_bundle):
    from dcae_deploy.calibration.quantize import GraphPolicy

    model = onnx.load(str(tiny_bundle / "slice_lrp_0.onnx"))
    kept = float_nodes(model, GraphPolicy())
    assert kept["attention_scores"] == [] and len(kept["last_layer"]) == 1  # conv -> tanh -> *0.5 -> + y_hat_raw
    kept = float_nodes(onnx.load(str(tiny_bundle / "slice_params_0.onnx")), GraphPolicy())
    last = kept["last_layer"]
    assert any("cc_mean" in n for n in last) and any("cc_scale" in n for n in last)
    assert {n for n in kept["attention_scores"] if "MatMul" in n} and len(kept["ops"]) >= 2
    nothing = float_nodes(model, GraphPolicy(float_ops=(), float_attention_scores=False, float_last_layer=False))
    assert all(not v for v in nothing.values())
    # g_s ends in a sub-pixel conv and a pixel shuffle: that conv is its last layer
    g_s = onnx.load(str(tiny_bundle / "g_s.onnx"))
    output_producer = next(n for n in g_s.graph.node if g_s.graph.output[0].name in n.output)
    assert output_producer.op_type == "DepthToSpace"
    kept = float_nodes(g_s, policy_for("g_s"))
    assert kept["last_layer"] == [n.name for n in g_s.graph.node if n.output[0] == output_producer.input[0]]
    # and its first layer, the transposed conv on y_hat (exported as a conv), stays float too
    first = next(n for n in g_s.graph.node if g_s.graph.input[0].name in n.input)
    assert first.name.startswith("/g_s/g_s.0/") and kept["first_layer"] == [first.name]
    # a whole block by its module path: exactly its weighted nodes
    blocks = float_nodes(g_s, GraphPolicy(float_blocks=("g_s.2",)))["blocks"]
    weighted = [n.name for n in g_s.graph.node if n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm")]
    assert blocks and blocks == sorted(n for n in weighted if n.startswith("/g_s/g_s.2/"))


def test_unknown_method_is_refused(tiny_bundle, tmp_path):
    with pytest.raises(ValueError, match="unknown calibration method"):
        quantize_graph(tiny_bundle / "h_a.onnx", tmp_path / "x.onnx", [{}], "kl")


# ---- int8 bundles --------------------------------------------------------------------------

def _export_int8(tiny_model, recorded, path, target):
    from dcae_deploy.calibration.quantize import Int8Quantizer
    from dcae_deploy.export.export import export_bundle

    quantizer = Int8Quantizer(recorded["calibration"], recorded["heldout"], "minmax", info=recorded["info"],
                              target=target)
    # The portable margin's measurement has tests of its own (test_portable, test_cpp_host).
    export_bundle(tiny_model, path, precision="int8", quantize=quantizer, preset="tiny",
                  progress=lambda *a, **k: None, threads=1, measure_margin=False)
    return path


@pytest.fixture(scope="module")
def int8_bundle(tiny_model, recorded, tmp_path_factory):
    """The default int8 form (for onnxruntime)."""
    return _export_int8(tiny_model, recorded, tmp_path_factory.mktemp("int8") / "bundle", "onnxruntime")


@pytest.fixture(scope="module")
def int8_tensorrt_bundle(tiny_model, recorded, tmp_path_factory):
    return _export_int8(tiny_model, recorded, tmp_path_factory.mktemp("int8trt") / "bundle", "tensorrt")


@pytest.mark.slow
def test_int8_bundle_policy_report_and_error_bound(int8_bundle):
    from dcae_deploy.runtime.bundle import Bundle

    manifest = Bundle.open(int8_bundle).manifest
    for name, spec in manifest.graphs.items():
        assert spec.precision == ("fp32" if is_entropy_graph(name) else "int8")
        ops = _ops(int8_bundle / spec.file)
        assert ("DequantizeLinear" in ops) == (spec.precision == "int8")
    assert manifest.precision == "int8" and not manifest.reduced_precision_entropy
    report = json.loads((int8_bundle / "int8_report.json").read_text())
    assert sorted(report["graphs"]) == ["g_a", "g_s", "h_a"]
    assert report["calibration_crops"] == CALIB_COUNT and report["heldout_crops"] == HOLDOUT
    assert report["heldout_disjoint"] is True
    for name, bound in MIN_SQNR_DB.items():
        for output, err in report["graphs"][name]["heldout_error"].items():
            assert err["sqnr_db"] > bound, f"{name}.{output}: {err['sqnr_db']:.1f} dB"
    assert report["graphs"]["g_s"]["heldout_error"]["x_hat"]["psnr_db"] > MIN_XHAT_PSNR_DB


def test_int8_onnxruntime_weights_fit_7_bits_and_its_kernels_compute_exact_integer_arithmetic(int8_bundle,
                                                                                              tiny_bundle, recorded):
    """The onnxruntime form's weights are 7-bit, so onnxruntime's u8 x s8
    kernels keep what exact integer arithmetic gives on every x86 CPU: with
    8-bit weights, CPUs without VNNI saturate int16 pair sums (g_a's y fell
    from 31.6 to 13.8 dB SQNR on an AMD EPYC). The fused integer kernels'
    error against fp32 is that of the same Q/DQ graph run as
    dequantise-then-float."""
    import onnx
    from onnx import numpy_helper

    from dcae_deploy.calibration.quantize import compare_graphs

    for name, output in (("g_a", "y"), ("g_s", "x_hat")):
        path = int8_bundle / f"{name}.onnx"
        weights = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
                   if t.data_type == onnx.TensorProto.INT8]
        assert weights and all(int(np.abs(w.astype(int)).max()) <= 64 for w in weights)  # 255 x 64 x 2 < 2**15
        assert max(int(np.abs(w.astype(int)).max()) for w in weights) >= 60  # 7 bits used, not fewer
        samples = [r[name] for r in recorded["heldout"]]
        fused, exact = (compare_graphs(tiny_bundle / f"{name}.onnx", path, samples, 1, unfused)[output]["sqnr_db"]
                        for unfused in (False, True))
        assert abs(fused - exact) < 0.5, f"{name}: {fused:.1f} dB with integer kernels, {exact:.1f} dB exact"


@pytest.mark.slow
def test_int8_tensorrt_bundle_passes_the_static_tensorrt_check(int8_tensorrt_bundle):
    """Q/DQ as TensorRT takes them: INT8 with zero points 0, per-channel
    scales on weights only, no INT32 (bias) dequantisation."""
    from dcae_deploy.export.tensorrt_check import check_bundle, errors

    assert Manifest.read(int8_tensorrt_bundle).int8_target == "tensorrt"
    problems = {name: errors(p) for name, p in check_bundle(int8_tensorrt_bundle).items()}
    assert not any(problems.values()), {k: [str(p) for p in v[:3]] for k, v in problems.items() if v}


def test_build_engines_refuses_an_onnxruntime_int8_bundle_with_the_reason(int8_bundle, capsys):
    from dcae_deploy.export.cli import main

    assert Manifest.read(int8_bundle).int8_target == "onnxruntime"
    assert main(["build-engines", str(int8_bundle), "--check-only"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--int8-target tensorrt" in err and "quantised for onnxruntime" in err


@pytest.mark.parametrize("form", ["onnxruntime", "tensorrt"])
def test_int8_round_trip_of_either_form(form, int8_bundle, int8_tensorrt_bundle, kodak_crop):
    from dcae_deploy.runtime.codec import Codec

    bundle = int8_bundle if form == "onnxruntime" else int8_tensorrt_bundle
    pixels = kodak_crop("kodim23", 256, 256, top=40, left=200)
    codec = Codec(bundle, threads=1)
    encoded = codec.encode(pixels)
    decoded = codec.decode(encoded.data)
    np.testing.assert_array_equal(decoded.y_hat, encoded.y_hat)


def test_int8_round_trip_decodes_bit_exactly_with_its_own_bundle(int8_bundle, kodak_crop):
    from dcae_deploy.runtime.codec import Codec

    pixels = kodak_crop("kodim19", 256, 320, top=100, left=60)
    codec = Codec(int8_bundle, threads=1)
    encoded = codec.encode(pixels)
    decoded = codec.decode(encoded.data)
    np.testing.assert_array_equal(decoded.y_hat, encoded.y_hat)
    np.testing.assert_array_equal(codec.decompress(encoded.data), decoded.x)
    assert decoded.x.shape == pixels.shape


def test_int8_quality_is_close_to_fp32(int8_bundle, tiny_bundle, kodak_crop):
    """One image through the fp32 and the int8 bundle (g_a, h_a and g_s int8):
    rate and distortion against the original stay close."""
    from dcae_deploy.runtime.codec import Codec
    from dcae_deploy.runtime.metrics import psnr

    pixels = kodak_crop("kodim21", 256, 384, top=200, left=300)
    result = {}
    for tag, path in (("fp32", tiny_bundle), ("int8", int8_bundle)):
        codec = Codec(path, threads=1)
        data = codec.compress(pixels)
        result[tag] = (len(data), psnr(pixels, codec.decompress(data)))
    # measured: 22752 vs 22692 bytes, 5.569 vs 5.568 dB (the golden weights are
    # random, so the decode itself is poor; this guards against gross int8 errors)
    assert abs(result["int8"][0] - result["fp32"][0]) < 0.05 * result["fp32"][0]
    assert abs(result["int8"][1] - result["fp32"][1]) < 0.5


def _int8_weight_range(path) -> int:
    """The largest |value| among a graph's int8 initializers (its weights)."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return max(int(np.abs(numpy_helper.to_array(t).astype(np.int16)).max())
               for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8)


def test_int8_bundles_record_their_weight_bits_and_warn_where_onnxruntime_would_saturate_them(
        int8_bundle, int8_tensorrt_bundle, tmp_path, kodak_crop, monkeypatch, capsys):
    import shutil
    import warnings

    from PIL import Image

    from dcae_deploy.runtime import backends
    from dcae_deploy.runtime.cli import main
    from dcae_deploy.runtime.codec import Codec

    seven, eight = Manifest.read(int8_bundle), Manifest.read(int8_tensorrt_bundle)
    assert (seven.int8_weight_bits, eight.int8_weight_bits) == (7, 8)
    # the recorded bits are the graphs' own: 7-bit weights lie in [-64, 63]
    assert _int8_weight_range(int8_bundle / seven.graphs["g_a"].file) <= 64
    assert _int8_weight_range(int8_tensorrt_bundle / eight.graphs["g_a"].file) > 64
    # a bundle written before the field had 8-bit weights
    older = tmp_path / "older"
    shutil.copytree(int8_bundle, older)
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["int8_weight_bits"]
    (older / "manifest.json").write_text(json.dumps(manifest))

    def warnings_of(bundle) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            Codec(bundle, threads=1)
        return [str(w.message) for w in caught]

    monkeypatch.setattr(backends, "int8_products_saturate_here", lambda: True)
    assert warnings_of(int8_bundle) == []
    for bundle in (int8_tensorrt_bundle, older):
        (message,) = warnings_of(bundle)
        assert "8-bit weights" in message and "no VNNI" in message
    image = tmp_path / "crop.png"
    Image.fromarray(kodak_crop("kodim05", 64, 64)).save(image)
    capsys.readouterr()
    assert main(["compress", str(image), "-b", str(int8_tensorrt_bundle), "-o", str(tmp_path / "a.dcae"),
                 "--threads", "1"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warned) == 1 and warned[0].startswith("dcae: warning: this int8 bundle has 8-bit weights")
    monkeypatch.setattr(backends, "int8_products_saturate_here", lambda: False)  # a CPU with VNNI
    assert warnings_of(int8_tensorrt_bundle) == []


@pytest.mark.slow
def test_cli_int8_with_entropy_precision_same(tiny_model, calib_dir, tmp_path, kodak_crop, capsys, monkeypatch):
    """dcae-export --precision int8 --entropy-precision same --int8-target tensorrt: every graph int8,
    the manifest marks reduced-precision entropy, the report covers all graphs
    and lands in the bundle, the calibration cache is written, and streams
    round-trip with the bundle. Every path is given relative to the working
    directory."""
    from dcae.checkpoint import save_checkpoint
    from dcae_deploy.export.cli import main

    checkpoint = tmp_path / "tiny.pth.tar"
    save_checkpoint(checkpoint, tiny_model, preset="tiny")
    out = tmp_path / "b8"
    monkeypatch.chdir(tmp_path)
    argv = ["tiny.pth.tar", "-o", "b8", "--precision", "int8", "--entropy-precision", "same",
            "--calib", os.path.relpath(calib_dir), "--calib-count", str(CALIB_COUNT), "--calib-holdout", str(HOLDOUT),
            "--calib-cache", "cache", "--threads", "1", "--int8-target", "tensorrt"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "error against fp32 on held-out crops" in err and "not fp32" in err
    manifest = Manifest.read(out)
    assert {g.precision for g in manifest.graphs.values()} == {"int8"}
    assert manifest.entropy_precision == "same" and manifest.reduced_precision_entropy
    assert manifest.int8_target == "tensorrt"
    report = json.loads((out / "int8_report.json").read_text())
    assert report["target"] == "tensorrt"
    assert report["calib_dir"] == str(calib_dir)  # the folder itself, not how it was reached from here
    assert sorted(report["graphs"]) == sorted(manifest.graphs)
    for name, entry in report["graphs"].items():
        bound = MIN_SQNR_DB.get(name, MIN_SQNR_DB_ENTROPY)
        for output, e in entry["heldout_error"].items():
            assert e["sqnr_db"] is None or e["sqnr_db"] > bound, f"{name}.{output}: {e['sqnr_db']:.1f} dB"
    assert report["cache_hit"] is False and list((tmp_path / "cache").iterdir())
    from dcae_deploy.export.tensorrt_check import check_bundle, errors

    assert not any(errors(p) for p in check_bundle(out).values())
    # int8 entropy graphs: a stream still decodes bit-exactly with its own bundle
    from dcae_deploy.runtime.codec import Codec

    codec = Codec(out, threads=1)
    encoded = codec.encode(kodak_crop("kodim15", 256, 256, top=40, left=200))
    decoded = codec.decode(encoded.data)
    np.testing.assert_array_equal(decoded.y_hat, encoded.y_hat)


def test_calibration_package_imports_without_torch():
    """calibration/ may use the runtime and onnxruntime, never torch or dcae."""
    import subprocess
    import sys

    code = ("import sys, dcae_deploy.calibration.images, dcae_deploy.calibration.cache, dcae_deploy.calibration.quantize; "
            "bad = [m for m in ('torch', 'dcae', 'exporter') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
