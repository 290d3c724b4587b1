"""TensorRT: the static check of bundles against TensorRT's ONNX support,
availability messages, engine builds and the tensorrt backend.

Three layers:
- the static check and the refusals run everywhere (no TensorRT needed);
- a simulated TensorRT (tests/fake_tensorrt.py: onnxruntime behind the
  TensorRT and cuda-python calls we make) runs our build and backend plumbing
  end to end on the CPU;
- real TensorRT tests, skipped with the reason where TensorRT or a CUDA GPU
  is missing.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper
from onnx import numpy_helper as nh

from dcae_deploy.export.tensorrt_check import check_bundle, check_graph, errors, summary, tensorrt_unavailable_reason
from dcae_deploy.runtime.backends import get_backend
from dcae_deploy.runtime.errors import BackendUnavailableError, BadInputError, BundleError
from dcae_deploy.runtime.manifest import Manifest
from dcae_deploy.runtime.tensorrt_backend import check_engine_platform

from tests import fake_tensorrt

ROOT = Path(__file__).resolve().parents[1]
TRT_REASON = tensorrt_unavailable_reason()
needs_tensorrt = pytest.mark.skipif(TRT_REASON is not None, reason=f"needs TensorRT and a CUDA GPU: {TRT_REASON}")
# Small profiles keep builds short: the tests code 256x256 and 256x384 crops.
SIZES = dict(min_size=(256, 256), opt_size=(256, 256), max_size=(384, 384))


@pytest.fixture(scope="module")
def bundles(tiny_model, tiny_bundle, tmp_path_factory):
    """The tiny model's fp32 bundle and an fp16 one with fp16 entropy graphs
    too (every graph then goes through the fp16 conversion)."""
    from dcae_deploy.export.export import export_bundle

    path = tmp_path_factory.mktemp("trt") / "fp16"
    export_bundle(tiny_model, path, precision="fp16", entropy_precision="same", preset="tiny",
                  progress=lambda *a, **k: None, threads=1)
    return {"fp32": tiny_bundle, "fp16": path}


@pytest.fixture
def fp32_copy(bundles, tmp_path):
    """A writable copy of the fp32 bundle (builds write engines/ into it)."""
    return Path(shutil.copytree(bundles["fp32"], tmp_path / "bundle"))


# ---- the static check ------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_exported_bundles_pass_the_static_check(bundles, precision):
    results = check_bundle(bundles[precision])
    assert len(results) == 14
    assert not [str(p) for found in results.values() for p in errors(found)]
    assert "all 14 graphs pass" in summary(results)


@pytest.mark.slow
def test_official_bundle_with_winograd_slice_heads_passes_the_static_check(golden_bundle):
    """The official configuration's fp32 entropy graphs carry the Winograd convs
    (dcae_deploy.export.winograd: a conv with channels as batch, batched MatMuls on a
    folded constant); TensorRT takes them as they are."""
    path, _, _ = golden_bundle
    results = check_bundle(path)
    assert len(results) == 14 and not [str(p) for found in results.values() for p in errors(found)]


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "handmade", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


X = helper.make_tensor_value_info("x", T.FLOAT, [1, 4, "h", "w"])
Y = helper.make_tensor_value_info("y", T.FLOAT, None)
SCALE = nh.from_array(np.array(0.05, np.float32), "scale")


def _qdq(zero_point=None, scale=SCALE, axis=None):
    """x -> QuantizeLinear -> DequantizeLinear -> y."""
    inputs, inits = ["x", scale.name], [scale]
    if zero_point is not None:
        inputs.append(zero_point.name)
        inits.append(zero_point)
    extra = {} if axis is None else {"axis": axis}
    nodes = [helper.make_node("QuantizeLinear", inputs, ["q"], name="quantize", **extra),
             helper.make_node("DequantizeLinear", ["q"] + inputs[1:], ["y"], name="dequantize", **extra)]
    return _model(nodes, [X], [Y], inits)


def _loop():
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", T.INT64, []), helper.make_tensor_value_info("cond_in", T.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", T.BOOL, [])])
    inits = [nh.from_array(np.array(3, np.int64), "trips"), nh.from_array(np.array(True), "cond")]
    nodes = [helper.make_node("Loop", ["trips", "cond"], [], body=body, name="loop"),
             helper.make_node("Relu", ["x"], ["y"], name="relu")]
    return _model(nodes, [X], [Y], inits)


def _float_range():
    limit = helper.make_tensor_value_info("limit", T.FLOAT, [])
    inits = [nh.from_array(np.array(0, np.float32), "start"), nh.from_array(np.array(1, np.float32), "delta")]
    return _model([helper.make_node("Range", ["start", "limit", "delta"], ["y"], name="range")], [limit], [Y], inits)


def _integer_einsum():
    a = helper.make_tensor_value_info("a", T.INT32, [2, 2])
    out = helper.make_tensor_value_info("out", T.INT32, None)
    return _model([helper.make_node("Einsum", ["a", "a"], ["out"], equation="ij,jk->ik", name="einsum")], [a], [out])


REJECTED = {
    "Loop": (_loop, "control flow"),
    "unsupported op": (lambda: _model([helper.make_node("Unique", ["x"], ["y"], name="u")], [X], [Y]),
                       "not supported by TensorRT"),
    "custom domain": (lambda: _model([helper.make_node("Gelu", ["x"], ["y"], name="g", domain="com.microsoft")],
                                     [X], [Y]), "plugin"),
    "upper-case Einsum": (lambda: _model([helper.make_node("Einsum", ["x", "x"], ["y"], name="e",
                                                           equation="bcHW,bcHW->bcHW")], [X], [Y]),
                          "lower-case"),
    "integer Einsum": (_integer_einsum, "INT32"),
    "uint8 QDQ (asymmetric)": (lambda: _qdq(nh.from_array(np.array(128, np.uint8), "zero")), "UINT8"),
    "non-zero int8 zero point": (lambda: _qdq(nh.from_array(np.array(3, np.int8), "zero")), "symmetric"),
    "Q without zero point": (lambda: _qdq(), "UINT8 in ONNX"),
    "per-channel activation": (lambda: _qdq(nh.from_array(np.zeros(4, np.int8), "zero"),
                                            nh.from_array(np.full(4, 0.05, np.float32), "scale"), axis=1),
                               "per tensor"),
    "dynamic float Range": (_float_range, "shape tensors"),
    "LayerNormalization below opset 17": (
        lambda: _model([helper.make_node("LayerNormalization", ["x", "scale"], ["y"], name="ln")], [X], [Y],
                       [SCALE], opset=16), "opset >= 17"),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_static_check_rejects(case):
    build, expected = REJECTED[case]
    found = errors(check_graph(build()))
    assert found, f"{case} passed the check"
    assert any(expected in str(p) for p in found), [str(p) for p in found]


def test_symmetric_int8_qdq_conv_passes():
    """TensorRT's explicit-quantisation form: per-tensor int8 activations,
    per-channel int8 weights, zero points 0, float bias."""
    weights = nh.from_array(np.ones((8, 4, 3, 3), np.int8), "w")
    w_scale = nh.from_array(np.full(8, 0.01, np.float32), "w_scale")
    w_zero = nh.from_array(np.zeros(8, np.int8), "w_zero")
    zero = nh.from_array(np.array(0, np.int8), "zero")
    bias = nh.from_array(np.zeros(8, np.float32), "b")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"], axis=0, name="wdq"),
        helper.make_node("Conv", ["xd", "wd", "b"], ["y"], pads=[1, 1, 1, 1], name="conv"),
    ]
    model = _model(nodes, [X], [Y], [SCALE, zero, weights, w_scale, w_zero, bias])
    assert check_graph(model) == []


def test_int32_bias_dequantize_is_rejected():
    """onnxruntime's quantize_static quantises biases to int32 unless
    extra_options QuantizeBias=False; TensorRT dequantises int8 only."""
    bias = nh.from_array(np.zeros(8, np.int32), "b32")
    b_scale = nh.from_array(np.full(8, 1e-4, np.float32), "b_scale")
    nodes = [helper.make_node("DequantizeLinear", ["b32", "b_scale"], ["bias"], axis=0, name="bias_dq"),
             helper.make_node("Add", ["x", "bias"], ["y"], name="add")]
    found = errors(check_graph(_model(nodes, [X], [Y], [bias, b_scale])))
    assert any("INT32" in str(p) for p in found)


def test_check_only_command_runs_without_tensorrt(bundles):
    done = subprocess.run([sys.executable, "-m", "dcae_deploy.export.cli", "build-engines", str(bundles["fp32"]),
                           "--check-only"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "all 14 graphs pass" in done.stderr


# ---- without TensorRT ---------------------------------------------------------------------

@pytest.mark.skipif(TRT_REASON is None, reason="TensorRT and a GPU are present here")
def test_unavailable_reason_says_what_is_missing():
    assert "\n" not in TRT_REASON
    assert "TensorRT Python package not installed" in TRT_REASON or "no CUDA GPU visible" in TRT_REASON
    with pytest.raises(BackendUnavailableError, match="TensorRT backend unavailable"):
        get_backend("tensorrt")


@pytest.mark.skipif(TRT_REASON is None, reason="TensorRT and a GPU are present here")
def test_build_engines_without_tensorrt_exits_1_with_one_line(bundles):
    done = subprocess.run([sys.executable, "-m", "dcae_deploy.export.cli", "build-engines", str(bundles["fp32"])],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dcae-export build-engines: error: ")
    assert TRT_REASON in lines[0]
    assert not (Path(bundles["fp32"]) / "engines").exists()


def test_engines_refused_on_another_gpu_or_tensorrt():
    recorded = {"gpu_name": "NVIDIA H100 80GB HBM3", "tensorrt_version": "10.3.0", "graphs": {"g_a": {}}}
    check_engine_platform(recorded, dict(recorded))  # same host: accepted
    with pytest.raises(BundleError, match="GPU 'NVIDIA H100 80GB HBM3', this host has 'NVIDIA L4'") as info:
        check_engine_platform(recorded, {**recorded, "gpu_name": "NVIDIA L4"})
    assert "\n" not in str(info.value) and "build-engines" in str(info.value)
    with pytest.raises(BundleError, match="TensorRT '10.3.0', this host has '10.4.0'"):
        check_engine_platform(recorded, {**recorded, "tensorrt_version": "10.4.0"})
    with pytest.raises(BundleError, match="no TensorRT engines"):
        check_engine_platform({}, recorded)


def test_profile_shapes_follow_the_manifest_symbols(bundles):
    from dcae_deploy.export.tensorrt_build import EngineBuildError, parse_size, profile_shapes

    manifest = Manifest.read(bundles["fp32"])
    shapes = profile_shapes(manifest.graphs["slice_params_1"], (256, 256), (512, 768), (2048, 1024))
    c, m = manifest.model["config"]["M"] // 5, manifest.model["config"]["M"]
    assert shapes["y_hat_prev"] == {"min": [1, c, 16, 16], "opt": [1, c, 32, 48], "max": [1, c, 128, 64]}
    assert profile_shapes(manifest.graphs["h_s"], (256, 256), (512, 768), (2048, 1024))["z_hat"]["opt"][2:] == [8, 12]
    assert shapes["latent_means"]["max"] == [1, m, 128, 64]
    assert parse_size("512x768") == (512, 768)
    with pytest.raises(EngineBuildError):
        parse_size("500x768")


# ---- our plumbing, through a simulated TensorRT ------------------------------------------------

def test_simulated_build_records_engines_in_the_manifest(fp32_copy, monkeypatch):
    from dcae_deploy.export.tensorrt_build import build_engines

    fake_tensorrt.install(monkeypatch)
    build_engines(fp32_copy, progress=lambda *a: None, **SIZES)
    manifest = Manifest.read(fp32_copy)  # still a valid manifest
    engines = manifest.engines
    assert engines["gpu_name"] == "Simulated GPU" and engines["tensorrt_version"] == fake_tensorrt.__version__
    assert engines["profile"] == {"min": [256, 256], "opt": [256, 256], "max": [384, 384]}
    assert sorted(engines["graphs"]) == sorted(manifest.graphs)
    for name, entry in engines["graphs"].items():
        assert (fp32_copy / "engines" / entry["file"]).is_file()
        assert entry["onnx_sha256"] == manifest.graphs[name].sha256
    assert (fp32_copy / "engines" / "timing.cache").is_file()
    assert not [p for p in (fp32_copy / "engines").iterdir() if p.name.startswith(".")]  # staging removed
    # fp32 graphs are built with TF32 off and strongly typed
    assert all(fake_tensorrt.BuilderFlag.TF32 in c.cleared for c in fake_tensorrt.built_configs)


@pytest.mark.slow
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_simulated_backend_codes_like_onnxruntime(fp32_copy, monkeypatch, kodak_crop, cuda_graphs):
    """Through the tensorrt backend's buffers and copies the streams are those
    of onnxruntime (the simulation computes with it), at two image sizes."""
    from dcae_deploy.export.tensorrt_build import build_engines
    from dcae_deploy.runtime.codec import Codec
    from dcae_deploy.runtime.tensorrt_backend import TensorRTBackend

    fake_tensorrt.install(monkeypatch)
    build_engines(fp32_copy, progress=lambda *a: None, **SIZES)
    trt = Codec(fp32_copy, backend=TensorRTBackend(cuda_graphs=cuda_graphs))
    cpu = Codec(fp32_copy, backend="onnxruntime")
    for height, width in ((256, 256), (256, 384), (256, 256)):
        pixels = kodak_crop("kodim03", height, width)
        encoded, reference = trt.encode(pixels), cpu.encode(pixels, margin=None)  # neither portable
        assert (encoded.y, encoded.z) == (reference.y, reference.z)
        decoded = trt.decode_streams(encoded.y, encoded.z, height, width)
        assert np.array_equal(decoded.y_hat, encoded.y_hat)
    assert trt.backend.numeric_class == f"tensorrt:Simulated GPU:{fake_tensorrt.__version__}"
    if cuda_graphs:
        assert fake_tensorrt.cudart.graph_launches > 0
    with pytest.raises(BadInputError, match="outside the TensorRT engine's profile"):
        trt.encode(kodak_crop("kodim03", 512, 512))


def test_simulated_run_device_keeps_support_on_the_gpu(fp32_copy, monkeypatch, kodak_crop):
    from dcae_deploy.export.tensorrt_build import build_engines
    from dcae_deploy.runtime.codec import Codec
    from dcae_deploy.runtime.tensorrt_backend import DeviceTensor, TensorRTBackend

    fake_tensorrt.install(monkeypatch)
    build_engines(fp32_copy, progress=lambda *a: None, **SIZES)
    cpu = Codec(fp32_copy, backend="onnxruntime")
    encoded = cpu.encode(kodak_crop("kodim05", 256, 256))
    codec = Codec(fp32_copy, backend=TensorRTBackend())
    scales, means = codec._hyper_synthesis(np.zeros((1, codec.bundle.z_channels, 4, 4), np.float32),
                                           (1, codec.bundle.latent_channels, 16, 16))
    params = codec._session("slice_params_0").run_device({"latent_scales": scales, "latent_means": means},
                                                         keep=("support",))
    assert isinstance(params["support"], DeviceTensor) and isinstance(params["mu"], np.ndarray)
    c = codec.bundle.slice_channels
    raw = encoded.y_hat[:, :c]
    on_device = codec._session("slice_lrp_0").run_device({"support": params["support"], "y_hat_raw": raw})
    on_host = codec._session("slice_lrp_0").run({"support": params["support"].numpy(), "y_hat_raw": raw})
    assert np.array_equal(on_device["y_hat"], on_host["y_hat"])


def test_simulated_backend_refuses_engines_of_another_gpu(fp32_copy, monkeypatch):
    from dcae_deploy.export.tensorrt_build import build_engines
    from dcae_deploy.runtime.codec import Codec

    fake_tensorrt.install(monkeypatch, gpu_name="NVIDIA A100-SXM4-80GB")
    build_engines(fp32_copy, progress=lambda *a: None, **SIZES)
    fake_tensorrt.install(monkeypatch, gpu_name="NVIDIA H100 80GB HBM3")
    codec = Codec(fp32_copy, backend="tensorrt")
    with pytest.raises(BundleError, match="GPU 'NVIDIA A100-SXM4-80GB', this host has 'NVIDIA H100 80GB HBM3'"):
        codec.load_graphs()


def test_simulated_backend_refuses_stale_or_altered_engines(fp32_copy, monkeypatch):
    from dcae_deploy.export.tensorrt_build import build_engines
    from dcae_deploy.runtime.codec import Codec

    fake_tensorrt.install(monkeypatch)
    build_engines(fp32_copy, progress=lambda *a: None, **SIZES)
    plan = fp32_copy / "engines" / "h_s.plan"
    plan.write_bytes(plan.read_bytes() + b"x")
    with pytest.raises(BundleError, match="h_s.plan was altered"):
        Codec(fp32_copy, backend="tensorrt").load_graphs(["h_s"])
    manifest = json.loads((fp32_copy / "manifest.json").read_text())
    manifest["engines"]["graphs"]["g_s"]["onnx_sha256"] = "0" * 64
    (fp32_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="g_s.plan was built from another version of g_s.onnx"):
        Codec(fp32_copy, backend="tensorrt").load_graphs(["g_s"])


# ---- real TensorRT ----------------------------------------------------------------------------

@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_tensorrt
def test_engine_build_for_the_tiny_bundle(fp32_copy):
    from dcae_deploy.export.tensorrt_build import build_engines

    manifest = build_engines(fp32_copy, progress=lambda *a: None, **SIZES)
    assert sorted(manifest.engines["graphs"]) == sorted(manifest.graphs)
    assert Manifest.read(fp32_copy).engines["gpu_name"] == manifest.engines["gpu_name"]


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_tensorrt
def test_tensorrt_round_trip_is_exact(fp32_copy, kodak_crop):
    """Decoding on TensorRT reproduces the TensorRT encoder's latents bit for
    bit and ends in sync, at two sizes; engines match onnxruntime closely."""
    from dcae_deploy.export.tensorrt_build import build_engines
    from dcae_deploy.runtime.codec import Codec

    build_engines(fp32_copy, progress=lambda *a: None, **SIZES)
    codec, cpu = Codec(fp32_copy, backend="tensorrt"), Codec(fp32_copy, backend="onnxruntime")
    for height, width in ((256, 256), (256, 384)):
        pixels = kodak_crop("kodim03", height, width)
        encoded = codec.encode(pixels)
        decoded = codec.decode_streams(encoded.y, encoded.z, height, width)
        assert np.array_equal(decoded.y_hat, encoded.y_hat)
        assert np.mean(encoded.indexes != cpu.encode(pixels, margin=None).indexes) < 1e-3
        assert codec.decompress(encoded.data).shape == (height, width, 3)


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_tensorrt
def test_tensorrt_refuses_engines_recorded_for_another_gpu(fp32_copy):
    from dcae_deploy.export.tensorrt_build import build_engines
    from dcae_deploy.runtime.codec import Codec

    build_engines(fp32_copy, progress=lambda *a: None, **SIZES)
    manifest = json.loads((fp32_copy / "manifest.json").read_text())
    manifest["engines"]["gpu_name"] = "Some Other GPU"
    (fp32_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="GPU 'Some Other GPU'"):
        Codec(fp32_copy, backend="tensorrt").load_graphs()
