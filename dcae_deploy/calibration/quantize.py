"""INT8 QDQ quantisation of one exported graph, calibrated on its real inputs.

QuantizeLinear / DequantizeLinear pairs (QuantFormat.QDQ) with int8 weights per
output channel (symmetric), in one of two forms (`INT8_FORMS`, chosen per
bundle by `dcae-export --int8-target`), because the two runtimes fuse
different patterns into integer kernels:

- "onnxruntime" (default): uint8 asymmetric activations on the inputs of the
  weighted operators and the outputs of the convolutions, int32 biases,
  depthwise convolutions float. onnxruntime's CPU provider turns
  DQ -> Conv -> Q into QLinearConv and DQ -> MatMul into MatMulIntegerToFloat,
  whose u8 x s8 kernels use VNNI or AMX; each Linear is written here as one
  MatMulIntegerToFloat that adds its bias too (`dcae_deploy.calibration.fusions`).
  Measured at 768x512, 2 threads: a slice_params graph 165 -> 90 ms, its
  largest 3x3 conv 19 -> 4.9 ms; why MatMul outputs and depthwise convs stay
  float: at INT8_FORMS.
- "tensorrt": int8 symmetric activations (zero point 0) on the inputs of the
  weighted operators only, float biases: the form TensorRT's explicit
  quantisation consumes (`dcae_deploy.export.tensorrt_check` passes every such graph).
  onnxruntime fuses its MatMuls into MatMulIntegerToFloat but not its convs
  (float biases), which it runs as "fake quantisation": dequantise, then
  float kernels. Slower than fp32 there (embedded model, 24 Kodak images,
  2 threads: 393 / 392 ms encode / decode against 318 / 337 ms fp32).

Every other operator runs in float between a DequantizeLinear and the next
QuantizeLinear.

Some nodes stay float whatever the calibration says (the per-graph policy
table `POLICIES`):
- LayerNormalization and Softmax: their outputs have a few large values next
  to many small ones, which one int8 scale cannot hold;
- the attention-score chain, q @ k -> scale/bias -> Softmax -> @ v: the scores
  feed an exponential, so an int8 step in them is a multiplicative error in
  the attention weights;
- each graph's last weighted layer: its output is the graph's output (y, z,
  x_hat, mu/scale), where an int8 step is directly visible as rate or
  distortion, and it is a small share of the compute.

Calibration methods (`--calib-method`), measured on the small model (a step-200
training snapshot, biases then still int8-scaled int32), 16 calibration crops
from TRAIN_DIR, held-out SQNR of y / x_hat:
minmax 36.6 / 39.2 dB, percentile (99.999) 36.9 / 40.4 dB, entropy (KL, 512
bins searched for a 255-level window) 33.3 / 34.6 dB. KL picks ranges that
clip the largest values, which a classifier tolerates and a codec, whose
outputs are the values themselves, does not. On later weights percentile was
best on Kodak (`DEFAULT_METHOD`). Also
measured and rejected (tensorrt form): Q/DQ on the outputs of the weighted ops
too (-0.5 to -2.3 dB, and no faster in onnxruntime CPU without int32 biases),
int8 last layers (-1.4 to -1.8 dB); a float first layer gains only 0.2 to
0.5 dB. The onnxruntime form, whose asymmetric activations fit the one-sided
GELU outputs better, costs 0.149 dB and +0.5 % bpp on Kodak (fixture model; 0.195 dB
when g_s's last conv, before its pixel shuffle, was quantised: DepthToSpace is
in _PASS_THROUGH for that reason).

This package never imports torch: the exporter records the inputs (see
`dcae_deploy.export.calibrate`) and hands them over as numpy arrays.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    create_calibrator,
    quantize_static,
)
from onnxruntime.quantization.calibrate import save_tensors_data
from onnxruntime.quantization.shape_inference import quant_pre_process

from . import DEFAULT_METHOD
from .fusions import MS_DOMAIN, fuse_gelu, fuse_matmul_bias

METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}
WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# Ops a walk from an output back to its last weighted layer (or along an
# attention-score chain) may pass through.
# DepthToSpace is g_s's pixel shuffle after its last (sub-pixel) conv: the
# walk must pass it to find that conv.
_PASS_THROUGH = {"Add", "Sub", "Mul", "Div", "Tanh", "Sigmoid", "Relu", "Reshape", "Transpose", "Concat",
                 "Cast", "Where", "Squeeze", "Unsqueeze", "Identity", "DepthToSpace"}
_LAST_LAYER_HOPS = 4
# Histogram settings per method (see calibrate_ranges); percentile keeps
# onnxruntime's defaults (2048 bins, 99.999th percentile of |x|).
CALIBRATOR_OPTIONS = {"entropy": {"num_bins": 512, "num_quantized_bins": 255}}
CALIBRATION_CHUNK = 4


@dataclass(frozen=True)
class Int8Form:
    """How activations and biases are quantised: each runtime fuses Q/DQ
    pairs into int8 kernels only in the form it knows."""

    activation_type: QuantType
    activation_symmetric: bool
    quantize_bias: bool
    # weighted ops whose outputs get a Q/DQ pair too (the others' stay float)
    quantized_outputs: tuple[str, ...]
    # depthwise convolutions stay float (see INT8_FORMS)
    float_depthwise: bool
    # onnxruntime's com.microsoft kernels where its optimizer does not reach them
    # (dcae_deploy.calibration.fusions): Linears as MatMulIntegerToFloat with their bias,
    # erf GELUs after a quantised conv as Gelu
    onnxruntime_fusions: bool
    # 7-bit weights (onnxruntime's reduce_range), for kernels that saturate with 8 (see INT8_FORMS)
    seven_bit_weights: bool
    # the target's integer arithmetic is exact (no saturation): the held-out
    # error is measured with onnxruntime running the Q/DQ graph as
    # dequantise-then-float, since its own integer CPU kernels are not the target's
    measure_unfused: bool
    description: str


INT8_FORMS = {
    # onnxruntime's CPU provider fuses DQ -> Conv -> Q with an int32 bias into
    # QLinearConv and DQ -> MatMul into MatMulIntegerToFloat, whose u8 x s8
    # kernels use VNNI or AMX; a conv with a float bias is left dequantised
    # and run as a float kernel.
    # MatMul outputs stay float: in the Swin blocks they feed float islands
    # (bias adds, LayerNorm, attention, residuals), so a Q/DQ pair there only
    # adds a round trip (g_a at 768x512, 2 threads: 1300 -> 1135 ms, SQNR
    # 32.3 -> 33.4 dB). Depthwise convs stay float: they are memory-bound, and
    # a DequantizeLinear on their output, which onnxruntime duplicates per
    # consumer, breaks the GELU after them into Erf/Div/Mul (-> 1046 ms;
    # g_s 1498 -> 1248 ms; fp32 1358 / 1445 ms). Each Linear's bias is added
    # inside its MatMulIntegerToFloat (dcae_deploy.calibration.fusions; with q/k/v weights
    # as constants, dcae_deploy.export.rewrites): g_a 955 -> 790 ms, g_s 1290 -> 1105 ms
    # (A/B of the two forms' graphs, 4 alternating runs each). The GELUs after
    # quantised convs (the slice heads' convs stay int8) are written as one
    # Gelu each (dcae_deploy.calibration.fusions): int8 slice_params 1.04-1.10x.
    # Weights are 7-bit: without VNNI (AVX2 only), onnxruntime's u8 x s8
    # kernels add each pair of products in int16 (VPMADDUBSW), which
    # saturates with 8-bit weights (255 x 127 x 2 > 32767) and not with 7-bit
    # (255 x 64 x 2). Measured on an AMD EPYC (AVX2, no VNNI), small model, 16
    # calibration crops, 4 held-out (256x256), SQNR of g_a y / g_s x_hat:
    # 8-bit 13.8 / 31.4 dB, 8-bit unfused (exact integer arithmetic, what VNNI
    # and AMX compute) 31.6 / 37.3 dB, 7-bit 31.3 / 36.8 dB fused or not. One
    # bundle then gives the same quality on every x86 CPU.
    "onnxruntime": Int8Form(QuantType.QUInt8, False, True, ("Conv", "ConvTranspose"), True, True, True, False,
                            "uint8 asymmetric activations, int8 per-channel weights of 7 bits, int32 biases, "
                            "Q/DQ on inputs of weighted ops and outputs of convs, depthwise convs float "
                            "(onnxruntime QLinearConv/MatMulIntegerToFloat, Linear biases and GELUs fused)"),
    # TensorRT's explicit quantisation: int8 symmetric only, and it
    # dequantises INT8/FP8/INT4/FP4 alone, not the INT32 biases above; it adds
    # float biases itself in the fused kernel.
    # TensorRT's int8 kernels accumulate exactly: 8-bit weights, and the
    # report measures the graph unfused (onnxruntime's AVX2 kernels would
    # saturate where TensorRT does not).
    "tensorrt": Int8Form(QuantType.QInt8, True, False, (), False, False, False, True,
                         "int8 symmetric activations and per-channel weights, float biases, "
                         "Q/DQ on inputs of weighted ops (TensorRT explicit quantisation)"),
}

Samples = list[dict[str, np.ndarray]]  # one {input name: array} per crop


@dataclass(frozen=True)
class GraphPolicy:
    """What of one graph is kept float (see the module docstring for why)."""

    float_ops: tuple[str, ...] = ("LayerNormalization", "Softmax")
    float_attention_scores: bool = True
    float_last_layer: bool = True
    float_first_layer: bool = False
    # blocks kept float whole, by module path (node names start "/<graph>/<block>/")
    float_blocks: tuple[str, ...] = ()
    # Q/DQ also on the outputs of weighted ops (TensorRT needs only the inputs'
    # and fuses the rest; measured worse, see the module docstring)
    quantize_outputs: bool = False


DEFAULT_POLICY = GraphPolicy()
# Per graph name (or prefix, ending with "*"). The first match wins.
# g_s's first layer (the transposed conv on y_hat, at 1/16 of the image's
# resolution: a few % of g_s's work) and its block 4 (the residual upsampling
# from 1/4 to 1/2 of the resolution) stay float: they are where the int8 error
# of the decoded image comes from most. First layer, measured on the embedded
# model (percentile, 16 calibration and 4 held-out crops of 256x256, x_hat
# SQNR): all int8 37.8 dB, first layer float 39.8 dB; each other block float
# instead 37.8 to 38.6 dB. Block 4, on Kodak (24 images, percentile, 32 crops,
# dcae_deploy.bench.int8_quality, first layer float): -0.214 -> -0.170 dB against
# fp32; blocks 1 or 3 float instead gain under 0.01 dB (docs/precision.md).
# Cost: the first layer 7.5 %, block 4 about 7 % of g_s's time (768x512,
# 1 thread, AMD EPYC). Keeping g_a's block 4 float halves the bpp cost but
# not the PSNR's, so g_a stays int8.
POLICIES: dict[str, GraphPolicy] = {
    "g_a": DEFAULT_POLICY,
    "h_a": DEFAULT_POLICY,
    "g_s": GraphPolicy(float_first_layer=True, float_blocks=("g_s.4",)),
    "h_s": DEFAULT_POLICY,
    "slice_params_*": DEFAULT_POLICY,
    "slice_lrp_*": DEFAULT_POLICY,
}


def policy_for(name: str, policies: dict[str, GraphPolicy] | None = None) -> GraphPolicy:
    for pattern, policy in (policies or POLICIES).items():
        if pattern == name or (pattern.endswith("*") and name.startswith(pattern[:-1])):
            return policy
    return DEFAULT_POLICY


class SampleReader(CalibrationDataReader):
    """onnxruntime's calibration reader over recorded inputs, in order;
    `rewind()` starts over (a reader is consumed by one calibration run)."""

    def __init__(self, samples: Samples, input_names: list[str]):
        if not samples:
            raise ValueError("no calibration samples")
        missing = [n for n in input_names if n not in samples[0]]
        if missing:
            raise ValueError(f"calibration samples lack inputs {missing}")
        self.samples = samples
        self.input_names = list(input_names)
        self._next = 0

    def get_next(self) -> dict | None:
        if self._next >= len(self.samples):
            return None
        sample = self.samples[self._next]
        self._next += 1
        return {n: np.ascontiguousarray(sample[n], dtype=np.float32) for n in self.input_names}

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return len(self.samples)


# ---- which nodes stay float -----------------------------------------------------------

class _GraphIndex:
    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.nodes = list(graph.node)
        self.constants = {i.name for i in graph.initializer}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.inputs = [i.name for i in graph.input if i.name not in self.constants]
        self.outputs = [o.name for o in graph.output]

    def activation_producers(self, node) -> list:
        return [self.producer[i] for i in node.input
                if i in self.producer and self.producer[i].op_type != "Constant"]


def _last_layers(index: _GraphIndex) -> set[str]:
    """Weighted nodes that reach a graph output through at most a few
    pass-through ops (the final conv, or conv -> tanh -> scale -> add)."""
    found: set[str] = set()
    stack = [(index.producer[o], 0) for o in index.outputs if o in index.producer]
    while stack:
        node, hops = stack.pop()
        if node.op_type in WEIGHTED_OPS:
            found.add(node.name)
        elif node.op_type in _PASS_THROUGH and hops < _LAST_LAYER_HOPS:
            stack += [(p, hops + 1) for p in index.activation_producers(node)]
    return found


def _first_layers(index: _GraphIndex) -> set[str]:
    found: set[str] = set()
    stack = [(c, 0) for i in index.inputs for c in index.consumers.get(i, [])]
    while stack:
        node, hops = stack.pop()
        if node.op_type in WEIGHTED_OPS:
            found.add(node.name)
        elif node.op_type in _PASS_THROUGH and hops < _LAST_LAYER_HOPS:
            stack += [(c, hops + 1) for o in node.output for c in index.consumers.get(o, [])]
    return found


def _attention_chains(index: _GraphIndex) -> set[str]:
    """For each Softmax: back to the q @ k MatMul, forward to the @ v MatMul."""
    found: set[str] = set()
    for softmax in (n for n in index.nodes if n.op_type == "Softmax"):
        stack = index.activation_producers(softmax)
        while stack:
            node = stack.pop()
            if node.name in found:
                continue
            if node.op_type == "MatMul":
                found.add(node.name)
            elif node.op_type in _PASS_THROUGH - {"Concat"}:
                found.add(node.name)
                stack += index.activation_producers(node)
        stack = list(index.consumers.get(softmax.output[0], []))
        while stack:
            node = stack.pop()
            if node.op_type == "MatMul":
                found.add(node.name)
            elif node.op_type in ("Reshape", "Transpose", "Cast", "Identity"):
                found.add(node.name)
                stack += [c for o in node.output for c in index.consumers.get(o, [])]
    return found


def _depthwise_convs(index: _GraphIndex) -> set[str]:
    # every grouped conv of DCAE is depthwise (groups == channels)
    return {n.name for n in index.nodes if n.op_type == "Conv"
            and any(a.name == "group" and a.i > 1 for a in n.attribute)}


def float_nodes(model: onnx.ModelProto, policy: GraphPolicy, form: Int8Form | None = None) -> dict[str, list[str]]:
    """{reason: sorted node names} of the nodes `policy` (and the int8 `form`) keeps float."""
    index = _GraphIndex(model)
    reasons = {"ops": {n.name for n in index.nodes if n.op_type in policy.float_ops}}
    if form is not None and form.float_depthwise:
        reasons["depthwise"] = _depthwise_convs(index)
    if policy.float_attention_scores:
        reasons["attention_scores"] = _attention_chains(index)
    if policy.float_last_layer:
        reasons["last_layer"] = _last_layers(index)
    if policy.float_first_layer:
        reasons["first_layer"] = _first_layers(index)
    if policy.float_blocks:
        reasons["blocks"] = {n.name for n in index.nodes if n.op_type in WEIGHTED_OPS
                             and any(f"/{block}/" in n.name for block in policy.float_blocks)}
    return {k: sorted(v) for k, v in reasons.items()}


def _name_unnamed_nodes(model: onnx.ModelProto) -> None:
    # nodes_to_exclude works by name; give every node one
    used = {n.name for n in model.graph.node}
    for k, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_unnamed_{k}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


# ---- quantising one graph ------------------------------------------------------------

@dataclass
class QuantizedGraph:
    float_nodes: dict[str, list[str]]
    weighted_nodes: int  # weighted ops in the graph
    quantized_nodes: int  # weighted ops with int8 inputs
    qdq_nodes: dict[str, int] = field(default_factory=dict)


def quantize_graph(fp32_path: str | Path, out_path: str | Path, samples: Samples, method: str = DEFAULT_METHOD,
                   exclude_nodes: list[str] | tuple = (), policy: GraphPolicy = DEFAULT_POLICY,
                   preprocess: bool = True, target: str = "onnxruntime") -> QuantizedGraph:
    """Quantise the fp32 ONNX graph at `fp32_path` to QDQ int8 at `out_path`,
    calibrated on `samples` (real inputs of this graph). `exclude_nodes` adds
    node names to what `policy` keeps float."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")
    if target not in INT8_FORMS:
        raise ValueError(f"unknown int8 target {target!r}; known: {', '.join(INT8_FORMS)}")
    with tempfile.TemporaryDirectory(prefix="dcae-quant-") as tmp:
        source = Path(tmp) / "pre.onnx"
        if preprocess:
            # Constant folding and onnx shape inference. Symbolic shape
            # inference is skipped: it cannot follow the Swin blocks' window
            # reshapes of dynamic H, W ("Incomplete symbolic shape inference").
            quant_pre_process(str(fp32_path), str(source), skip_symbolic_shape=True)
        else:
            source.write_bytes(Path(fp32_path).read_bytes())
        model = onnx.load(str(source))
        _name_unnamed_nodes(model)
        onnx.save(model, str(source))
        form = INT8_FORMS[target]
        keep_float = float_nodes(model, policy, form)
        exclude = sorted(set().union(*keep_float.values(), exclude_nodes))
        if exclude_nodes:
            keep_float["requested"] = sorted(exclude_nodes)
        input_names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
        ranges = Path(tmp) / "ranges.json"
        save_tensors_data(calibrate_ranges(source, samples, input_names, method, Path(tmp),
                                           symmetric=form.activation_symmetric), ranges)
        extra = {"ActivationSymmetric": form.activation_symmetric, "WeightSymmetric": True,
                 "QuantizeBias": form.quantize_bias}
        if not policy.quantize_outputs:
            extra["OpTypesToExcludeOutputQuantization"] = [op for op in WEIGHTED_OPS
                                                          if op not in form.quantized_outputs]
        quantize_static(
            str(source), str(out_path), None, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(WEIGHTED_OPS), per_channel=True, reduce_range=form.seven_bit_weights,
            activation_type=form.activation_type, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
            calibrate_method=METHODS[method], extra_options=extra, calibration_cache_path=str(ranges),
        )
    quantized = onnx.load(str(out_path))
    if form.onnxruntime_fusions and fuse_matmul_bias(quantized) + fuse_gelu(quantized):
        onnx.save(quantized, str(out_path))
    return _summarise(quantized, keep_float)


def calibrate_ranges(model_path: Path, samples: Samples, input_names: list[str], method: str, workdir: Path,
                     chunk: int = CALIBRATION_CHUNK, symmetric: bool = True):
    """Activation ranges of the tensors around the weighted ops.

    Run here rather than inside `quantize_static` for two reasons:
    - the histogram settings: through `quantize_static` the entropy method
      gets 128 bins for 128 quantised bins, which leaves its KL search a single
      candidate (the full min-max range); here it gets 2048 bins searched for
      the best 255-level (int8) window, as TensorRT's entropy calibrator does;
    - memory: onnxruntime keeps every intermediate tensor of every sample until
      a collect call ends, so samples are fed `chunk` at a time."""
    options = {"symmetric": symmetric, **CALIBRATOR_OPTIONS.get(method, {})}
    calibrator = create_calibrator(model_path, list(WEIGHTED_OPS),
                                   augmented_model_path=str(workdir / "augmented.onnx"),
                                   calibrate_method=METHODS[method], extra_options=options)
    with contextlib.redirect_stdout(io.StringIO()):  # onnxruntime prints its histogram settings
        for start in range(0, len(samples), chunk):
            calibrator.collect_data(SampleReader(samples[start:start + chunk], input_names))
        return calibrator.compute_data()


def _summarise(quantized: onnx.ModelProto, keep_float: dict[str, list[str]]) -> QuantizedGraph:
    index = _GraphIndex(quantized)
    weighted = [n for n in index.nodes if n.op_type in WEIGHTED_OPS]
    # a fused Linear (dcae_deploy.calibration.fusions) takes its int8 input directly
    fused = sum(1 for n in index.nodes if n.domain == MS_DOMAIN and n.op_type == "MatMulIntegerToFloat")
    quantized_count = fused + sum(
        1 for n in weighted
        if n.input and n.input[0] in index.producer and index.producer[n.input[0]].op_type == "DequantizeLinear")
    qdq = {op: sum(n.op_type == op for n in index.nodes) for op in ("QuantizeLinear", "DequantizeLinear")}
    return QuantizedGraph(keep_float, len(weighted) + fused, quantized_count, qdq)


# ---- error against fp32 --------------------------------------------------------------

def _session(path: Path, threads: int | None, unfused: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if unfused:  # Q/DQ pairs stay as they are: dequantise, then float kernels
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare_graphs(fp32_path: str | Path, int8_path: str | Path, samples: Samples,
                   threads: int | None = 1, unfused: bool = False) -> dict[str, dict]:
    """Per output, over `samples`: the worst max |int8 - fp32| relative to
    max |fp32|, and the signal-to-quantisation-noise ratio in dB over all
    samples (for x_hat, also the PSNR of int8 against fp32 after both are
    clamped to [0, 1], as the codec clamps the decoded image). `unfused`:
    the int8 graph runs as dequantise-then-float (exact integer arithmetic)."""
    ref, test = _session(Path(fp32_path), threads), _session(Path(int8_path), threads, unfused)
    names = [o.name for o in ref.get_outputs()]
    acc = {n: {"max_abs": 0.0, "rel_max": 0.0, "signal": 0.0, "noise": 0.0, "count": 0, "pixel_noise": 0.0}
           for n in names}
    for sample in samples:
        feeds = {i.name: np.ascontiguousarray(sample[i.name], np.float32) for i in ref.get_inputs()}
        for name, a, b in zip(names, ref.run(names, feeds), test.run(names, feeds)):
            a, d = a.astype(np.float64), b.astype(np.float64) - a.astype(np.float64)
            stats = acc[name]
            max_abs = float(np.max(np.abs(d)))
            stats["max_abs"] = max(stats["max_abs"], max_abs)
            stats["rel_max"] = max(stats["rel_max"], max_abs / (float(np.max(np.abs(a))) or 1.0))
            stats["signal"] += float(np.sum(a * a))
            stats["noise"] += float(np.sum(d * d))
            stats["count"] += d.size
            if name == "x_hat":  # the codec clamps the decoded image to [0, 1]
                stats["pixel_noise"] += float(np.sum((np.clip(a + d, 0, 1) - np.clip(a, 0, 1)) ** 2))
    result = {}
    for name, s in acc.items():
        entry = {"max_abs": s["max_abs"], "rel_max": s["rel_max"],
                 "sqnr_db": _db(s["signal"], s["noise"])}
        if name == "x_hat":
            entry["psnr_db"] = _db(float(s["count"]), s["pixel_noise"])  # peak 1.0, clamped as decoded
        result[name] = entry
    return result


def _db(signal: float, noise: float) -> float:
    return float("inf") if noise == 0 else float(10 * np.log10(max(signal, 1e-300) / noise))


# ---- the export hook -----------------------------------------------------------------

class Int8Quantizer:
    """The `quantize(name, fp32_path, out_path)` hook of the exporter.

    Holds the recorded inputs of every graph over the calibration crops and
    over held-out crops; quantises a graph on the first, measures it against
    fp32 on the second, and keeps a report (`report()`, which the exporter
    stores as int8_report.json in the bundle)."""

    def __init__(self, calibration: list[dict], heldout: list[dict], method: str = DEFAULT_METHOD,
                 policies: dict[str, GraphPolicy] | None = None, info: dict | None = None,
                 threads: int | None = 1, target: str = "onnxruntime"):
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")
        if target not in INT8_FORMS:
            raise ValueError(f"unknown int8 target {target!r}; known: {', '.join(INT8_FORMS)}")
        self.target = target
        if not calibration:
            raise ValueError("no calibration records")
        self.calibration, self.heldout = calibration, heldout
        self.method = method
        self.policies = policies
        self.info = dict(info or {})
        self.threads = threads
        self.graphs: dict[str, dict] = {}

    @property
    def weight_bits(self) -> int:
        """The bits of the weights' range in this target's form (the bundle's manifest records it)."""
        return 7 if INT8_FORMS[self.target].seven_bit_weights else 8

    def __call__(self, name: str, fp32_path: str | Path, out_path: str | Path) -> None:
        policy = policy_for(name, self.policies)
        samples = [record[name] for record in self.calibration]
        result = quantize_graph(fp32_path, out_path, samples, self.method, policy=policy, target=self.target)
        entry = {"policy": asdict(policy), **asdict(result)}
        if self.heldout:
            entry["heldout_error"] = compare_graphs(fp32_path, out_path, [r[name] for r in self.heldout],
                                                    self.threads, INT8_FORMS[self.target].measure_unfused)
        self.graphs[name] = entry

    def report(self) -> dict:
        return {"method": self.method, "target": self.target, "form": INT8_FORMS[self.target].description,
                "calibration_crops": len(self.calibration),
                "heldout_crops": len(self.heldout), **self.info, "graphs": self.graphs}

    def report_json(self) -> str:
        return report_json(self.report())


def format_report(report: dict) -> str:
    """A table of the held-out error of each int8 graph."""
    lines = [f"int8 for {report.get('target', 'tensorrt')} ({report['method']}, "
             f"{report['calibration_crops']} calibration crops, "
             f"{report['heldout_crops']} held-out crops): error against fp32 on held-out crops",
             f"{'graph':<16} {'output':<14} {'SQNR dB':>8} {'max rel':>9} {'PSNR dB':>8} {'int8 ops':>9}"]
    for name, entry in report["graphs"].items():
        ops = f"{entry['quantized_nodes']}/{entry['weighted_nodes']}"
        for output, err in entry.get("heldout_error", {}).items():
            psnr = f"{err['psnr_db']:8.2f}" if "psnr_db" in err else f"{'':>8}"
            lines.append(f"{name:<16} {output:<14} {err['sqnr_db']:8.2f} {err['rel_max']:9.2e} {psnr} {ops:>9}")
            ops = ""
    return "\n".join(lines)


def report_json(report: dict) -> str:
    """Strict JSON: an infinite SQNR (int8 output identical to fp32) is written as null."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, (float, np.floating)):
            return float(value) if math.isfinite(value) else None
        if isinstance(value, np.integer):
            return int(value)
        return value

    return json.dumps(clean(report), indent=1, allow_nan=False)
