"""dcae-export: graphs checked against PyTorch, fp16 policy, entropy tables,
manifest schema, and refusals."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from dcae.model import DCAE
from dcae_deploy.export.export import ExportError, export_bundle
from dcae_deploy.export.graphs import graph_definitions
from dcae_deploy.export.reference_io import reference_graph_io
from dcae_deploy.runtime.imaging import pad_image
from dcae_deploy.runtime.manifest import Manifest, graph_order, is_entropy_graph, sha256_file


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(5)
    model = DCAE("small").eval()
    model.update(force=True)
    return model


@pytest.fixture(scope="module")
def bundles(small_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    quiet = lambda *a, **k: None
    for precision in ("fp32", "fp16"):
        # The portable margin's measurement has tests of its own (test_portable, test_cpp_host).
        export_bundle(small_model, root / precision, precision=precision, preset="small", progress=quiet,
                      measure_margin=False)
    return {p: root / p for p in ("fp32", "fp16")}


@pytest.fixture(scope="module")
def kodak_io(small_model, kodak_image):
    """Real graph inputs/outputs for a Kodak crop that is not the export sample."""
    x, _ = pad_image(kodak_image[100:400, 200:500])  # 300x300 -> 384x384
    return reference_graph_io(small_model, graph_definitions(small_model), x)


def _run_graph(path, inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def _rel_error(got, expected):
    return float(np.max(np.abs(got.astype(np.float64) - expected)) / max(np.max(np.abs(expected)), 1e-12))


@pytest.mark.slow
def test_fp32_graphs_match_pytorch_on_a_kodak_crop(bundles, kodak_io):
    manifest = Manifest.read(bundles["fp32"])
    for name in graph_order(5):
        spec = manifest.graphs[name]
        assert spec.precision == "fp32"
        got = _run_graph(bundles["fp32"] / spec.file, kodak_io[name]["inputs"])
        for out, expected in kodak_io[name]["outputs"].items():
            assert _rel_error(got[out], expected) <= 1e-4, (name, out)


def test_fp16_policy_and_error(bundles, kodak_io):
    manifest = Manifest.read(bundles["fp16"])
    assert not manifest.reduced_precision_entropy
    for name in graph_order(5):
        spec = manifest.graphs[name]
        assert spec.precision == ("fp32" if is_entropy_graph(name) else "fp16")
        got = _run_graph(bundles["fp16"] / spec.file, kodak_io[name]["inputs"])
        for out, expected in kodak_io[name]["outputs"].items():
            assert got[out].dtype == np.float32  # fp16 inside, float32 at the boundary
            bound = 1e-4 if spec.precision == "fp32" else 1e-2
            assert _rel_error(got[out], expected) <= bound, (name, out)
    # the entropy path is the same graphs as fp32: same fingerprint
    assert manifest.entropy_fingerprint == Manifest.read(bundles["fp32"]).entropy_fingerprint


@pytest.mark.slow
def test_entropy_precision_same_marks_the_bundle(small_model, tmp_path):
    manifest, _ = export_bundle(small_model, tmp_path / "b", precision="fp16", entropy_precision="same",
                                progress=lambda *a: None)
    assert manifest.reduced_precision_entropy
    assert manifest.graphs["slice_params_0"].precision == "fp16"


def test_manifest_round_trips_through_the_runtime_schema(bundles, small_model):
    manifest = Manifest.read(bundles["fp32"])
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest
    assert manifest.model["config"] == small_model.config.to_dict()
    for spec in manifest.graphs.values():
        assert sha256_file(bundles["fp32"] / spec.file) == spec.sha256
        assert all(t.dtype == "float32" for t in spec.inputs + spec.outputs)
    assert manifest.graphs["slice_params_2"].inputs[2].shape == [1, 64, "h", "w"]
    assert manifest.tools["onnxruntime"] == ort.__version__


def test_entropy_tables_are_the_model_buffers(bundles, small_model):
    tables = np.load(bundles["fp32"] / "entropy.npz")
    gc, eb = small_model.gaussian_conditional, small_model.entropy_bottleneck
    np.testing.assert_array_equal(tables["gaussian_cdfs"], gc.quantized_cdf.numpy())
    np.testing.assert_array_equal(tables["gaussian_scale_table"], gc.scale_table.numpy())
    np.testing.assert_array_equal(tables["z_cdfs"], eb._quantized_cdf.numpy())
    np.testing.assert_array_equal(tables["z_offsets"], eb._offset.numpy())
    np.testing.assert_array_equal(tables["z_medians"], eb._get_medians().detach().reshape(-1).numpy())


def test_export_fails_naming_the_graph_and_leaves_nothing(small_model, tmp_path, monkeypatch):
    import dcae_deploy.export.export as export_module

    monkeypatch.setattr(export_module, "FP32_TOLERANCE", 0.0)
    with pytest.raises(ExportError, match=r"graph g_a: onnxruntime differs"):
        export_bundle(small_model, tmp_path / "bad", progress=lambda *a: None)
    assert list(tmp_path.iterdir()) == []


def test_graphs_use_no_einsum_or_scatter(bundles):
    import onnx

    for path in bundles["fp32"].glob("*.onnx"):
        ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
        assert not ops & {"Einsum", "ScatterND", "ScatterElements"}, path.name


def _slices_of_glu_fc1(path) -> int:
    """Slice nodes that cut a ConvolutionalGLU's fc1 output in two."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    producer = {o: n for n in nodes for o in n.output}

    def source(name):  # through the bias Add to the MatMul
        node = producer.get(name)
        while node is not None and node.op_type == "Add":
            node = next((producer[i] for i in node.input if i in producer), None)
        return node

    return sum(1 for n in nodes if n.op_type == "Slice" and (src := source(n.input[0])) is not None
               and "mlp/fc1" in src.name)


def test_glu_is_traced_as_two_linears_in_the_image_graphs_only(bundles, small_model):
    """dcae_deploy.export.rewrites: g_a / g_s compute ConvolutionalGLU's two halves as two
    MatMuls (no Slice copies); the entropy graphs keep the reference's chunk;
    the reference model's own forward is untouched after export."""
    from dcae.layers import ConvolutionalGLU

    fp32 = bundles["fp32"]
    assert _slices_of_glu_fc1(fp32 / "g_a.onnx") == 0 and _slices_of_glu_fc1(fp32 / "g_s.onnx") == 0
    assert _slices_of_glu_fc1(fp32 / "slice_params_1.onnx") == 2
    glus = [m for m in small_model.modules() if isinstance(m, ConvolutionalGLU)]
    assert glus and all("forward" not in vars(m) for m in glus)


def _window_attention_gathers(path) -> int:
    """Gather nodes in window attention that copy image activations (upstream's
    qkv[0], qkv[1], qkv[2]); not the gathers of shapes or of parameters."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    activations = {i.name for i in graph.input}
    for node in graph.node:  # topological order: mark what depends on the image
        if node.op_type != "Shape" and activations.intersection(node.input):
            activations.update(node.output)
    return sum(1 for n in graph.node if n.op_type == "Gather" and "/msa/" in n.name and n.input[0] in activations)


@pytest.mark.parametrize("window_type", ["W", "SW"])
@pytest.mark.parametrize("size", [(32, 48), (16, 16)])
def test_pixel_major_window_attention_computes_the_reference(window_type, size):
    """dcae_deploy.export.rewrites' WMSA form equals the reference's forward (batch 2,
    non-square maps, both window types, both window sizes the presets use)."""
    from dcae.layers import WMSA
    from dcae_deploy.export.rewrites import export_rewrites

    torch.manual_seed(1)
    for dim, head_dim, window in ((96, 8, 8), (64, 16, 4)):
        module = WMSA(dim, dim, head_dim, window, window_type).eval()
        x = torch.randn(2, *size, dim)
        with torch.no_grad():
            reference = module(x)
            with export_rewrites(module):
                rewritten = module(x)
        torch.testing.assert_close(rewritten, reference, rtol=1e-5, atol=1e-6)
        assert "forward" not in vars(module)


@pytest.mark.parametrize("window_type", ["W", "SW"])
def test_chunked_window_attention_follows_any_window_count(window_type, tmp_path):
    """Blocks with 8 channels per head are traced as ATTENTION_CHUNKS chunks of
    windows whose bounds follow the input's window count: the graph, traced at
    one size, computes the reference at window counts below the chunk count
    (empty chunks), not divisible by it, and above it; a block with 16
    channels per head stays one chain."""
    import onnx

    from dcae.layers import WMSA
    from dcae_deploy.export.rewrites import ATTENTION_CHUNKS, export_rewrites

    torch.manual_seed(2)
    for head_dim, chains in ((8, ATTENTION_CHUNKS), (16, 1)):
        module = WMSA(32, 32, head_dim, 8, window_type).eval()
        path = tmp_path / f"wmsa_{head_dim}.onnx"
        with torch.no_grad(), export_rewrites(module):
            torch.onnx.export(module, (torch.randn(1, 64, 64, 32),), str(path), input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {1: "h", 2: "w"}},
                              opset_version=17, dynamo=False)
        graph = onnx.load(str(path)).graph
        assert sum(n.op_type == "Softmax" for n in graph.node) == chains
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for size in ((8, 8), (16, 8), (24, 40), (64, 64), (136, 72)):  # 1, 2, 15, 64, 153 windows
            x = torch.randn(1, *size, 32)
            with torch.no_grad():
                reference = module(x).numpy()
            np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel, c_in, c_out", [(5, 32, 16), (5, 16, 3), (3, 8, 24)])
def test_subpixel_upsampler_computes_the_transposed_conv(kernel, c_in, c_out):
    """dcae_deploy.export.rewrites' 4-phase conv + pixel shuffle equals dcae.layers.deconv
    (batch 2, non-square input), and leaves no buffer or forward behind."""
    from dcae.layers import deconv
    from dcae_deploy.export.rewrites import export_rewrites

    torch.manual_seed(2)
    module = deconv(c_in, c_out, kernel, 2).eval()
    x = torch.randn(2, c_in, 7, 10)
    with torch.no_grad():
        reference = module(x)
        with export_rewrites(module):
            rewritten = module(x)
    torch.testing.assert_close(rewritten, reference, rtol=1e-5, atol=1e-5)
    assert "forward" not in vars(module) and not dict(module.named_buffers())


def test_winograd_transforms_are_exact_and_the_conv_stays_accurate():
    """dcae_deploy.export.winograd: the Toom-Cook matrices satisfy the 1-D identity
    exactly; the rewritten conv (float32 constants) equals the float64 conv
    within the error measured for F(4x4, 3x3) at these points (~4e-6; 0, +-1,
    +-2 gives 1.2e-5), torch's own conv's order of error; only wide 3x3
    'same' convs qualify."""
    from torch import nn

    from dcae_deploy.export import winograd
    from dcae_deploy.export.rewrites import ENTROPY_REWRITES, export_rewrites

    b_t, g, a_t = winograd.toom_cook_matrices()
    rng = np.random.default_rng(0)
    d, k = rng.standard_normal(6), rng.standard_normal(3)
    np.testing.assert_allclose(a_t @ ((g @ k) * (b_t @ d)), np.correlate(d, k, "valid"), rtol=0, atol=1e-12)
    torch.manual_seed(3)
    for c, k_out, h, w in ((640, 128, 8, 12), (512, 160, 4, 4)):
        conv = nn.Conv2d(c, k_out, 3, padding=1).eval()
        x = torch.randn(1, c, h, w)
        with torch.no_grad():
            exact = torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
            with export_rewrites(conv, ENTROPY_REWRITES):
                rewritten = conv(x)
            plain = conv(x)
        scale = float(exact.abs().max())
        assert float((rewritten.double() - exact).abs().max()) / scale < 1e-5
        # torch's own fp32 conv, for scale: 1e-6 with its AVX-512 kernels
        # (Intel Xeon), 3.1e-6 with its AVX2 kernels (AMD EPYC) at these sizes
        assert float((plain.double() - exact).abs().max()) / scale < 4e-6
        assert "forward" not in vars(conv) and not dict(conv.named_buffers())
    assert winograd.applies(nn.Conv2d(960, 224, 3, padding=1))
    assert not winograd.applies(nn.Conv2d(256, 256, 3, padding=1))  # narrow: slower (docstring)
    assert not winograd.applies(nn.Conv2d(608, 64, 3, padding=1))  # few outputs: slower
    assert not winograd.applies(nn.Conv2d(640, 64, 3, stride=2, padding=1))
    assert not winograd.applies(nn.Conv2d(640, 64, 5, padding=2))


def _wide_3x3_convs(path) -> int:
    """Conv nodes that dcae_deploy.export.winograd would rewrite (3x3, wide enough)."""
    import onnx

    from dcae_deploy.export.winograd import WIDE_INPUT_CHANNELS, WIDE_OUTPUT_CHANNELS

    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    return sum(1 for n in graph.node if n.op_type == "Conv" and (shape := shapes.get(n.input[1]))
               and shape[0] >= WIDE_OUTPUT_CHANNELS and shape[1] >= WIDE_INPUT_CHANNELS and shape[2:] == [3, 3])


def _winograd_products(path) -> int:
    """Winograd convs in a graph: each computes its transformed weights G g G^T
    as a MatMul onto its (9, K * C) taps, an initializer (a constant
    computation that onnxruntime folds)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    taps = {t.name for t in graph.initializer if len(t.dims) == 2 and t.dims[0] == 9}
    return sum(1 for n in graph.node if n.op_type == "MatMul" and n.input[1] in taps)


def test_wide_entropy_convs_are_winograd_in_fp32_only(tmp_path):
    """A model whose lrp heads start 3M + 32 = 512 -> 128 (wide enough): slice_lrp_0
    traced for an fp32 graph has its first conv as Winograd and still computes
    the module (onnxruntime, 1e-4 as the export check); with winograd=False
    (dcae-export --no-winograd) or for fp16 or int8 it keeps the plain conv."""
    import dataclasses

    from dcae.config import get_config
    from dcae_deploy.export.export import _onnx_export

    torch.manual_seed(6)
    model = DCAE(dataclasses.replace(get_config("small"), head_hidden=(128, 48))).eval()
    defn = {d.name: d for d in graph_definitions(model)}["slice_lrp_0"]
    rng = np.random.default_rng(0)
    inputs = {"support": rng.standard_normal((1, 480, 16, 24)).astype(np.float32),
              "y_hat_raw": rng.standard_normal((1, 32, 16, 24)).astype(np.float32)}
    for precision, winograd, rewritten in (("fp32", True, True), ("fp32", False, False), ("fp16", True, False),
                                           ("int8", True, False)):
        path = tmp_path / f"{precision}.onnx"
        _onnx_export(defn, inputs, path, 17, precision, winograd)
        assert (_winograd_products(path), _wide_3x3_convs(path)) == ((1, 0) if rewritten else (0, 1)), precision
        if precision == "fp32" and winograd:
            path.rename(tmp_path / "winograd.onnx")
    with torch.no_grad():
        expected = defn.module(*(torch.from_numpy(inputs[n]) for n in defn.inputs)).numpy()
    got = _run_graph(tmp_path / "winograd.onnx", inputs)["y_hat"]
    assert _rel_error(got, expected) <= 1e-4
    # the file keeps the 3x3 taps, not the 4x larger transformed weights ...
    assert (tmp_path / "winograd.onnx").stat().st_size < 1.1 * (tmp_path / "fp32.onnx").stat().st_size
    # ... which onnxruntime computes once, when it loads the graph
    import onnx

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "winograd.onnx"), options, providers=["CPUExecutionProvider"])
    assert _winograd_products(tmp_path / "optimized.onnx") == 0
    folded = onnx.load(str(tmp_path / "optimized.onnx")).graph.initializer
    assert [list(t.dims) for t in folded if list(t.dims) == [36, 128, 512]]
    assert not [name for name, _ in model.named_buffers() if "_winograd" in name]  # removed after tracing


def test_upsamplers_are_plain_convs_in_g_s_only(bundles):
    """g_s has no ConvTranspose left (a Conv + DepthToSpace each); h_s, an
    entropy graph, keeps the reference's ConvTranspose. Every conv's weight and
    bias is an initializer (what quantisation takes for a weight), the
    sub-pixel ones too."""
    import onnx

    def graph(name):
        return onnx.load(str(bundles["fp32"] / name), load_external_data=False).graph

    g_s, h_s = graph("g_s.onnx"), graph("h_s.onnx")
    g_s_ops = [n.op_type for n in g_s.node]
    assert "ConvTranspose" not in g_s_ops and g_s_ops.count("DepthToSpace") >= 2
    assert "ConvTranspose" in [n.op_type for n in h_s.node]
    parameters = {t.name for t in g_s.initializer}
    convs = [n for n in g_s.node if n.op_type == "Conv"]
    assert all(len(n.input) == 3 and set(n.input[1:]) <= parameters for n in convs)


def test_window_attention_is_traced_pixel_major_in_the_image_graphs_only(bundles, tmp_path):
    """g_a / g_s: no activation Gathers in window attention, and onnxruntime folds
    the per-head transposes into its MatMuls (FusedMatMul transBatch), the point
    of the rewrite; h_s (an entropy graph) keeps the reference's operators."""
    import onnx

    fp32 = bundles["fp32"]
    assert _window_attention_gathers(fp32 / "g_a.onnx") == 0 and _window_attention_gathers(fp32 / "g_s.onnx") == 0
    assert _window_attention_gathers(fp32 / "h_s.onnx") > 0
    # q, k, v weights are constants (initializers), not slices of the
    # embedding weight recomputed at every run
    graph = onnx.load(str(fp32 / "g_a.onnx"), load_external_data=False).graph
    parameters = {t.name for t in graph.initializer}
    assert not [n for n in graph.node if n.op_type == "Slice" and n.input[0] in parameters
                and "embedding_layer" in n.input[0]]
    # nor is the folded projection bias (W b_v, see dcae_deploy.export.rewrites) a product
    # of two initializers, which would keep a second copy of W in the file
    assert not [n for n in graph.node if n.op_type == "MatMul" and set(n.input) <= parameters]
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "g_a.optimized.onnx")
    ort.InferenceSession(str(fp32 / "g_a.onnx"), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
    strided = [n for n in optimized.graph.node if n.op_type == "FusedMatMul"
               and any(a.name == "transBatchB" and a.i == 1 for a in n.attribute)]
    softmaxes = [n for n in optimized.graph.node if n.op_type == "Softmax"]
    assert len(strided) == 2 * len(softmaxes) > 0  # q @ k^T and probs @ v of every block


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "dcae_deploy.export.cli", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_cli_refusals_are_one_line(tmp_path):
    result = _cli("-o", str(tmp_path / "b"), "--precision", "int8")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "--calib" in result.stderr
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"junk")
    result = _cli(str(junk), "-o", str(tmp_path / "b"))
    assert result.returncode == 1 and "not a readable PyTorch checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "b").exists()


def test_cli_help_explains_options():
    result = _cli("--help")
    assert result.returncode == 0
    for option in ("--precision", "--entropy-precision", "--transforms-for", "--opset", "--calib", "--tensorrt"):
        assert option in result.stdout


@pytest.mark.slow
def test_official_configuration_exports_end_to_end(golden_bundle):
    """The official size, from the golden deterministic weights (an official-layout
    state dict): every graph exported and checked against PyTorch at two sizes."""
    path, manifest, reports = golden_bundle
    assert manifest.model["config"]["M"] == 320 and len(reports) == 14
    assert all(r.rel_error <= 1e-4 for r in reports)
    # every slice head's first conv (960+ -> 224) is Winograd (dcae_deploy.export.winograd)
    for i in range(5):
        assert _winograd_products(path / f"slice_params_{i}.onnx") == 2  # cc_mean and cc_scale
        assert _winograd_products(path / f"slice_lrp_{i}.onnx") == 1
        assert _wide_3x3_convs(path / f"slice_params_{i}.onnx") == _wide_3x3_convs(path / f"slice_lrp_{i}.onnx") == 0
    assert sum(r.file_bytes for r in reports) > 450e6
    report = json.loads((path / "export_report.json").read_text())
    assert report["peak_rss_mb"] > 0


def _transposes(path) -> list[tuple]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [tuple(next(a.ints for a in n.attribute if a.name == "perm")) for n in graph.node
            if n.op_type == "Transpose"]


@pytest.mark.slow
def test_openvino_transforms_form_keeps_head_major_attention_and_the_same_entropy_graphs(
        tiny_model, tiny_bundle, kodak_crop, tmp_path):
    """--transforms-for openvino: g_a / g_s with upstream's head-major window
    attention (OpenVINO runs each per-head view of the pixel-major form as a
    copy), the same y in OpenVINO as the onnxruntime form's, byte-identical
    entropy graphs, and so files that the onnxruntime form's bundle decodes."""
    from dcae_deploy.runtime.codec import Codec

    path = tmp_path / "openvino_form"
    export_bundle(tiny_model, path, progress=lambda *a, **k: None, preset="tiny", threads=1,
                  measure_margin=False, transforms_for="openvino")
    assert json.loads((path / "export_report.json").read_text())["transforms_for"] == "openvino"
    assert json.loads((tiny_bundle / "export_report.json").read_text())["transforms_for"] == "onnxruntime"
    ov_form, ort_form = Manifest.read(path), Manifest.read(tiny_bundle)
    assert ov_form.entropy_fingerprint == ort_form.entropy_fingerprint
    for name, spec in ort_form.graphs.items():
        assert (ov_form.graphs[name].sha256 == spec.sha256) == is_entropy_graph(name), name
    # k's pixel-major per-head view (pixels moved last) is the rewrite's; the
    # head-major form has upstream's q/k/v split (activation Gathers) instead.
    assert (1, 2, 3, 0) in _transposes(tiny_bundle / "g_a.onnx")
    assert (1, 2, 3, 0) not in _transposes(path / "g_a.onnx")
    assert _window_attention_gathers(path / "g_a.onnx") > 0
    from dcae_deploy.runtime.backends import OpenVinoBackend

    pixels = kodak_crop("kodim05", 128, 192, top=40, left=200)  # a padded size: g_a takes it as is
    x = {"x": pixels.transpose(2, 0, 1)[None].astype(np.float32) / 255}
    openvino = OpenVinoBackend(threads=1)
    y_ov_form, y_ort_form = (openvino.load(m.graphs["g_a"], p / "g_a.onnx").run(x)["y"]
                             for m, p in ((ov_form, path), (ort_form, tiny_bundle)))
    assert np.abs(y_ov_form - y_ort_form).max() <= 1e-4 * np.abs(y_ort_form).max()
    encoded = Codec(path, backend="openvino", threads=1).encode(pixels)
    decoded = Codec(tiny_bundle, backend="onnxruntime", threads=1).decode(encoded.data)
    assert np.array_equal(decoded.symbols, encoded.symbols.reshape(-1))
    with pytest.raises(ValueError, match="transforms target"):
        export_bundle(tiny_model, tmp_path / "bad", progress=lambda *a, **k: None, transforms_for="tensorrt")
    assert not (tmp_path / "bad").exists()
