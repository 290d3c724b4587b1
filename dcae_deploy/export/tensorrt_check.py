"""Will TensorRT's ONNX parser take this bundle? A static answer, anywhere.

`check_bundle(bundle)` reads every graph of a bundle and reports each node
that TensorRT's ONNX parser (onnx-tensorrt) would refuse, before anyone
spends an hour on a GPU host finding out:

- the operator, its opset and its data types against the onnx-tensorrt
  support matrix (`_MATRIX` below);
- the matrix's restrictions, and a few more taken from the parser's source,
  for the operators that can appear in our graphs (ConvTranspose, Range,
  Einsum, Q/DQ, LayerNormalization, Slice, Resize, ...);
- the bundle's contract: every dynamic dimension of a graph input is one of
  the manifest's symbols (H, W, h, w, zh, zw), so `tensorrt_build` can derive
  an optimisation profile for it.

It is conservative: a construct TensorRT accepts only under conditions this
check cannot prove (Loop, If, Scan) is reported. What it cannot see: kernel
availability for a given GPU, memory, and numerical accuracy; those need a
build (`dcae-export build-engines`).

    problems = check_bundle("bundle/")     # {graph: [Problem, ...]}
    print(summary(problems))
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from dcae_deploy.runtime.manifest import Manifest, graph_order

# ---- the support matrix ------------------------------------------------------------
#
# From onnx/onnx-tensorrt docs/operators.md, the revision for TensorRT 10.15
# ("TensorRT 10.15 supports operators in the inclusive range of opset 9 to
# opset 24"). The TensorRT 10.0 revision of that page (shipped with the
# onnx-tensorrt 10.1 release) covers opsets 9 to 20 and lacks the operators in
# _NEWER_THAN_10_0; a bundle using those builds only on newer 10.x releases.
# TensorRT 11 drops weakly typed networks, which changes nothing here (our
# graphs carry their precision in their types, see tensorrt_build).
TABLE_TENSORRT_VERSION = "10.15"
OPSET_RANGE = (9, 24)
OPSET_RANGE_10_0 = (9, 20)

# F: FP32 FP16 BF16, I: INT32 INT64; "N" marks an operator the parser refuses.
_MATRIX = """
Abs F I | Acos F | Acosh F | Add F I | AffineGrid N | And BOOL | ArgMax F I | ArgMin F I
Asin F | Asinh F | Atan F | Atanh F | Attention F INT8 FP8 | AveragePool F | BatchNormalization F
Bernoulli N | BitShift N | BitwiseAnd N | BitwiseNot N | BitwiseOr N | BitwiseXor N
BlackmanWindow FP32 FP16 | Cast F I UINT8 BOOL | CastLike F I UINT8 BOOL | Ceil F | Col2Im N
Celu F | CenterCropPad N | Clip F | Compress N | Concat F I BOOL | ConcatFromSequence N
Constant F FP8 FP4 INT4 I BOOL | ConstantOfShape F FP8 FP4 INT4 I BOOL | Conv F | ConvInteger N
ConvTranspose F | Cos F | Cosh F | CumSum F | DFT N | DeformConv FP32 FP16 | DepthToSpace F I
DequantizeLinear INT8 FP8 FP4 INT4 | Det N | Div F I | Dropout F | DynamicQuantizeLinear N
Einsum F | Elu F | Equal F I | Erf F | Exp F | Expand F I BOOL | EyeLike F I BOOL
Flatten F I BOOL | Floor F | Gather F I BOOL | GatherElements F I BOOL | GatherND F I BOOL
Gelu F INT8 I | Gemm F | GlobalAveragePool F | GlobalLpPool F | GlobalMaxPool F | Greater F I
GreaterOrEqual F I | GridSample FP32 FP16 | GroupNormalization F | GRU F | HammingWindow FP32 FP16
HannWindow FP32 FP16 | HardSigmoid F | HardSwish F | Hardmax F | Identity F I BOOL | If F I BOOL
ImageScaler F | ImageDecoder N | InstanceNormalization F | IsInf F | IsNaN F I
LayerNormalization F | LeakyRelu F | Less F I | LessOrEqual F I | Log F | LogSoftmax F
Loop F I BOOL | LRN F | LSTM F | LpNormalization F | LpPool F | MatMul F | MatMulInteger N
Max F I | MaxPool F | MaxRoiPool N | MaxUnpool N | Mean F FP8 I | MeanVarianceNormalization F
MelWeightMatrix N | Min F I | Mish FP32 FP16 | Mod F I | Mul F I | Multinomial N | Neg F I
NegativeLogLikelihoodLoss N | NonMaxSuppression FP32 FP16 | NonZero FP32 FP16 | Not BOOL
OneHot F I BOOL | Optional N | OptionalGetElement N | OptionalHasElement N | Or BOOL | Pad F I
ParametricSoftplus F | Pow F I | PRelu F | QLinearConv N | QLinearMatMul N | QuantizeLinear F
RandomNormal F | RandomNormalLike F | RandomUniform F | RandomUniformLike F | Range F I
Reciprocal F | ReduceL1 F I | ReduceL2 F I | ReduceLogSum F I | ReduceLogSumExp F I
ReduceMax F I | ReduceMean F I | ReduceMin F I | ReduceProd F I | ReduceSum F I
ReduceSumSquare F I | RegexFullMatch N | Relu F I | Reshape F I BOOL | Resize F
ReverseSequence F I BOOL | RMSNormalization F | RNN F | RoiAlign FP32 FP16 | RotaryEmbedding F
Round F | STFT FP32 | ScaledTanh F | Scan F | Scatter F I | ScatterElements F I | ScatterND F I
Selu F | SequenceAt N | SequenceConstruct N | SequenceEmpty N | SequenceErase N | SequenceInsert N
SequenceLength N | SequenceMap N | Shape F I BOOL | Shrink F I | Sigmoid F | Sign F I | Sin F
Sinh F | Size F I BOOL | Slice F I BOOL | Softmax F | SoftmaxCrossEntropyLoss N | Softplus F
Softsign F | SpaceToDepth F I | Split F I BOOL | SplitToSequence N | Sqrt F | Squeeze F I BOOL
StringConcat N | StringNormalizer N | StringSplit N | Sub F I | Sum F I | Tan F | Tanh F
TensorScatter FP32 FP16 BF16 INT32 | TfIdfVectorizer N | ThresholdedRelu F | Tile F I BOOL
TopK F I | Transpose F I BOOL | Trilu F I BOOL | Unique N | Unsqueeze F I BOOL | Upsample F
Where F I BOOL | Xor BOOL
"""
_NEWER_THAN_10_0 = {"Attention", "RMSNormalization", "RotaryEmbedding", "TensorScatter",
                    "BlackmanWindow", "HammingWindow", "HannWindow", "STFT"}
_TYPE_NAMES = {"FP32": "FLOAT", "FP16": "FLOAT16", "BF16": "BFLOAT16", "INT32": "INT32", "INT64": "INT64",
               "INT8": "INT8", "UINT8": "UINT8", "BOOL": "BOOL", "FP8": "FLOAT8E4M3FN", "INT4": "INT4",
               "FP4": "FLOAT4E2M1"}
_GROUPS = {"F": ("FP32", "FP16", "BF16"), "I": ("INT32", "INT64")}
_CONTROL_FLOW = {"If", "Loop", "Scan"}


def _parse_matrix(text: str) -> tuple[dict[str, frozenset[int]], frozenset[str]]:
    supported, refused = {}, set()
    for entry in text.replace("\n", "|").split("|"):
        words = entry.split()
        if not words:
            continue
        op, codes = words[0], words[1:]
        if codes == ["N"]:
            refused.add(op)
            continue
        names = [n for code in codes for n in _GROUPS.get(code, (code,))]
        supported[op] = frozenset(getattr(onnx.TensorProto, _TYPE_NAMES[n], -1) for n in names)
    return supported, frozenset(refused)


SUPPORTED, REFUSED = _parse_matrix(_MATRIX)


# ---- results -----------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    graph: str
    node: str  # node name ("" for graph-level problems)
    op: str
    message: str
    severity: str = "error"  # "error": TensorRT refuses it; "warning": it may, or only some 10.x

    def __str__(self) -> str:
        where = f"node {self.node!r} ({self.op})" if self.op else "graph"
        return f"{self.graph}: {where}: {self.message}" + (" [warning]" if self.severity == "warning" else "")


def errors(problems) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


# ---- one graph ---------------------------------------------------------------------

class _Graph:
    """The facts the rules need: tensor types, constant values, consumers."""

    def __init__(self, model: onnx.ModelProto):
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # an invalid model: check what we can without types
            inferred = model
        g = inferred.graph
        self.graph = g
        self.types: dict[str, int] = {}
        for info in list(g.input) + list(g.output) + list(g.value_info):
            if info.type.HasField("tensor_type"):
                self.types[info.name] = info.type.tensor_type.elem_type
        self.constants: dict[str, onnx.TensorProto | None] = {t.name: t for t in g.initializer}
        for t in g.initializer:
            self.types[t.name] = t.data_type
        for node in g.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                self.constants[node.output[0]] = _constant_tensor(node)
            elif node.op_type == "Identity" and node.input[0] in self.constants:
                self.constants[node.output[0]] = self.constants[node.input[0]]
        self.used = {name for node in g.node for name in node.input} | {o.name for o in g.output}

    def is_constant(self, name: str) -> bool:
        return name in self.constants

    def value(self, name: str) -> np.ndarray | None:
        tensor = self.constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)


def _constant_tensor(node) -> onnx.TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
        if attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
            value = onnx.helper.get_attribute_value(attr)
            dtype = np.float32 if "float" in attr.name else np.int64
            return numpy_helper.from_array(np.array(value, dtype=dtype))
    return None  # sparse_value / strings: reported by the Constant rule


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _type_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type)


def check_graph(model_or_path, opset: int | None = None, name: str | None = None) -> list[Problem]:
    """Problems TensorRT's ONNX parser would have with this graph at `opset`
    (default: the model's own default-domain opset)."""
    model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else onnx.load(str(model_or_path))
    if name is None:
        name = Path(model_or_path).stem if not isinstance(model_or_path, onnx.ModelProto) else model.graph.name
    out: list[Problem] = []

    def report(node, message, severity="error"):
        out.append(Problem(name, node.name if node is not None else "", node.op_type if node is not None else "",
                           message, severity))

    model_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        opset = model_opset
    elif model_opset != opset:
        report(None, f"graph is at opset {model_opset}, the bundle says {opset}")
    if opset is None or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        report(None, f"opset {opset} is outside what TensorRT {TABLE_TENSORRT_VERSION} parses "
                     f"({OPSET_RANGE[0]}-{OPSET_RANGE[1]})")
        return out
    if opset > OPSET_RANGE_10_0[1]:
        report(None, f"opset {opset}: TensorRT 10.0 parses opsets up to {OPSET_RANGE_10_0[1]}", "warning")

    graph = _Graph(model)
    for info in list(model.graph.input) + list(model.graph.output):
        elem = graph.types.get(info.name)
        if elem is not None and elem not in _IO_TYPES:
            report(None, f"graph input/output {info.name!r} has type {_type_name(elem)}, "
                         f"which a TensorRT engine cannot take or give")
    functions = {(f.domain, f.name): f for f in model.functions}
    for node in _nodes(model.graph.node, functions):
        _check_node(node, graph, opset, report)
    return out


_IO_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
             onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT8, onnx.TensorProto.BOOL}


def _nodes(nodes, functions):
    # TensorRT's parser expands model-local functions; check their bodies.
    for node in nodes:
        function = functions.get((node.domain, node.op_type))
        if function is not None:
            yield from _nodes(function.node, functions)
        else:
            yield node


def _check_node(node, graph: _Graph, opset: int, report) -> None:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        report(node, f"operator from domain {node.domain!r}: TensorRT's parser would need a plugin for it")
        return
    if op in REFUSED:
        report(node, f"{op} is not supported by TensorRT's ONNX parser")
        return
    if op not in SUPPORTED:
        report(node, f"{op} is not in TensorRT's ONNX operator support matrix")
        return
    try:
        schema = onnx.defs.get_schema(op, opset, "")
    except onnx.defs.SchemaError:
        report(node, f"{op} does not exist at opset {opset}" + (
            " (LayerNormalization needs opset >= 17; below it, export decomposes it)"
            if op == "LayerNormalization" else ""))
        return
    if op in _NEWER_THAN_10_0:
        report(node, f"{op} is supported from TensorRT releases after 10.0 only", "warning")
    if op in _CONTROL_FLOW:
        report(node, f"{op}: TensorRT accepts control flow only under conditions this check cannot "
                     f"prove (static loop-carried shapes, branch outputs of equal rank); our graphs "
                     f"should have none (export unrolls and folds them)")
    if op not in ("QuantizeLinear", "DequantizeLinear", "Constant"):
        _check_types(node, schema, graph, report)
    rule = _RULES.get(op)
    if rule is not None:
        rule(node, graph, opset, report)


def _check_types(node, schema, graph: _Graph, report) -> None:
    """The matrix's types are those of the operator's main type parameter:
    the one its first output shares with its inputs (Where: T, not the
    condition), else its first input's (Equal: T, not the bool result)."""
    if not schema.inputs:
        return
    formal = [p.type_str for p in schema.inputs]
    variadic = schema.inputs[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic
    primary = schema.outputs[0].type_str if schema.outputs and schema.outputs[0].type_str in formal else formal[0]
    allowed = SUPPORTED[node.op_type]
    seen = set()
    for i, name in enumerate(node.input):
        if not name or name in seen:
            continue
        seen.add(name)
        param = formal[min(i, len(formal) - 1)] if variadic else (formal[i] if i < len(formal) else None)
        elem = graph.types.get(name)
        if param != primary or elem is None or elem in allowed:
            continue
        if elem == onnx.TensorProto.DOUBLE:
            report(node, f"input {name!r} is DOUBLE: TensorRT casts it to FLOAT, clamping", "warning")
        else:
            report(node, f"input {name!r} has type {_type_name(elem)}; TensorRT's {node.op_type} takes "
                         f"{', '.join(sorted(_type_name(t) for t in allowed if t >= 0))}")
    if node.op_type == "Cast":
        to = _attrs(node).get("to")
        if to is not None and to not in allowed:
            report(node, f"Cast to {_type_name(to)}: TensorRT casts only to "
                         f"{', '.join(sorted(_type_name(t) for t in allowed if t >= 0))}")


# ---- per-operator restrictions -----------------------------------------------------
#
# Each rule encodes a restriction of the matrix or of the parser's importer
# (onnxOpImporters.cpp) for an operator our graphs use or could plausibly
# come to use; each comment says where it comes from.

def _needs_constant(index: int, what: str, since_opset: int = 0):
    def rule(node, graph, opset, report):
        if opset >= since_opset and len(node.input) > index and node.input[index] \
                and not graph.is_constant(node.input[index]):
            report(node, f"{what} must be a constant (initializer or Constant node) for TensorRT")
    return rule


def _rule_conv(node, graph, opset, report):
    # Matrix: 2D or 3D (Conv also 1D, which the parser reshapes to 2D).
    kernel = _attrs(node).get("kernel_shape")
    weights = graph.value(node.input[1]) if len(node.input) > 1 else None
    spatial = len(kernel) if kernel else (weights.ndim - 2 if weights is not None else None)
    if spatial is not None and not 1 <= spatial <= 3:
        report(node, f"{spatial}-D {node.op_type}: TensorRT supports 1-D to 3-D only")


def _rule_conv_transpose(node, graph, opset, report):
    _rule_conv(node, graph, opset, report)
    attrs = _attrs(node)
    # The importer turns output_padding into post-padding (or a Pad layer):
    # supported. An explicit output_shape makes it derive pads itself and it
    # refuses negative pre-padding, which needs static spatial sizes to verify.
    if "output_shape" in attrs and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"):
        report(node, "ConvTranspose with output_shape: TensorRT derives the padding itself and refuses "
                     "negative pre-padding; export with pads and output_padding instead", "warning")
    strides = attrs.get("strides") or []
    for pad, stride in zip(attrs.get("output_padding") or [], strides):
        if pad >= stride:
            report(node, f"output_padding {pad} >= stride {stride} (invalid ONNX)")


def _rule_pool(node, graph, opset, report):
    attrs = _attrs(node)
    if any(d != 1 for d in attrs.get("dilations") or []):
        report(node, "pooling with dilations other than 1 is not supported by TensorRT")
    if len(attrs.get("kernel_shape") or [0, 0]) not in (2, 3):
        report(node, "TensorRT pools in 2-D or 3-D only")
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1] in graph.used:
        report(node, "MaxPool's Indices output is not supported by TensorRT")


def _rule_range(node, graph, opset, report):
    # Importer: start, limit and delta of one type among INT32, INT64, FLOAT.
    # Floats go through shape-tensor arithmetic, which has no float tensors:
    # float inputs must be constants (the 8.x matrix said so; the 10.x
    # importer still computes the length that way). Integer inputs may be
    # dynamic, as ours are (the window-attention mask length depends on W).
    types = {graph.types.get(name) for name in node.input}
    if len(types) > 1 and None not in types:
        report(node, "Range's start, limit and delta must have one type for TensorRT")
    elem = next(iter(types))
    if elem is not None and elem not in (onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.FLOAT):
        report(node, f"Range of {_type_name(elem)}: TensorRT's importer takes INT32, INT64 or FLOAT only")
    if elem == onnx.TensorProto.FLOAT and not all(graph.is_constant(n) for n in node.input):
        report(node, "Range with float inputs that are not constants: TensorRT computes the length "
                     "with shape tensors, which are integer")


_EINSUM_CHARS = set("abcdefghijklmnopqrstuvwxyz,->. ")


def _rule_einsum(node, graph, opset, report):
    # IEinsumLayer takes ASCII lower-case subscripts only (ONNX allows
    # upper-case too); ellipsis and more than two operands the importer
    # rewrites; float types only (matrix, checked with the types).
    equation = _attrs(node).get("equation", b"")
    equation = equation.decode() if isinstance(equation, bytes) else equation
    bad = sorted(set(equation) - _EINSUM_CHARS)
    if bad:
        report(node, f"Einsum equation {equation!r} uses {''.join(bad)!r}: TensorRT takes lower-case "
                     f"subscripts only")


def _rule_layer_norm(node, graph, opset, report):
    # Matrix: only the first output Y.
    if any(name in graph.used for name in node.output[1:] if name):
        report(node, "LayerNormalization's Mean / InvStdDev outputs are not supported by TensorRT")


def _rule_lstm(node, graph, opset, report):
    attrs = _attrs(node)
    if attrs.get("input_forget", 0) != 0 or attrs.get("layout", 0) != 0:
        report(node, "LSTM needs input_forget = 0 and layout = 0 for TensorRT")


def _rule_resize(node, graph, opset, report):
    attrs = _attrs(node)

    def text(key, default):
        value = attrs.get(key, default)
        return value.decode() if isinstance(value, bytes) else value

    allowed = {
        "mode": {"nearest", "linear"},
        "coordinate_transformation_mode": {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn",
                                           "asymmetric", "align_corners"},
        "nearest_mode": {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"},
        "keep_aspect_ratio_policy": {"stretch"},
    }
    defaults = {"mode": "nearest", "coordinate_transformation_mode": "half_pixel",
                "nearest_mode": "round_prefer_floor", "keep_aspect_ratio_policy": "stretch"}
    for key, values in allowed.items():
        value = text(key, defaults[key])
        if value not in values:
            report(node, f"Resize {key} {value!r} is not supported by TensorRT")
    if attrs.get("antialias", 0):
        report(node, "Resize with antialias is not supported by TensorRT")


def _rule_scatter_nd(node, graph, opset, report):
    reduction = _attrs(node).get("reduction", b"none")
    if (reduction.decode() if isinstance(reduction, bytes) else reduction) != "none":
        report(node, "ScatterND with a reduction is not supported by TensorRT")


def _rule_topk(node, graph, opset, report):
    attrs = _attrs(node)
    if attrs.get("sorted", 1) != 1:
        report(node, "TopK needs sorted = 1 for TensorRT")
    k = graph.value(node.input[1]) if len(node.input) > 1 else None
    if k is None and len(node.input) > 1:
        report(node, "TopK's K must be a constant for TensorRT")
    elif k is not None and int(np.max(k)) >= 3840:
        report(node, f"TopK with K = {int(np.max(k))}: TensorRT takes K < 3840")


def _rule_dropout(node, graph, opset, report):
    if len(node.input) > 2 and node.input[2]:
        value = graph.value(node.input[2])
        if value is None or bool(np.any(value)):
            report(node, "Dropout's training_mode must be a constant False for TensorRT")


def _rule_constant(node, graph, opset, report):
    if any(a.name in ("sparse_value", "value_string", "value_strings") for a in node.attribute):
        report(node, "Constant with sparse or string values is not supported by TensorRT")


def _rule_reduce(node, graph, opset, report):
    # Matrix: `axes` must be an initializer (an input from opset 18, and for
    # ReduceSum from opset 13).
    since = 13 if node.op_type == "ReduceSum" else 18
    _needs_constant(1, f"{node.op_type}'s axes", since)(node, graph, opset, report)


# ---- Q/DQ (int8 bundles) -------------------------------------------------------------
#
# TensorRT quantises symmetrically to signed INT8 (explicit quantisation):
# zero points must be constant zeros of type INT8; scales constant and
# positive (importer); per-axis scales only on constant weights
# ("activations-quantization does not support per-axis quantization"), with
# one scale per channel of the quantised axis. A QuantizeLinear without a zero
# point quantises to UINT8 in ONNX (onnxruntime) but to INT8 in TensorRT, and a
# UINT8 zero point (onnxruntime's default activation type) is read as INT8
# by TensorRT: both would make TensorRT compute something else than the
# graph onnxruntime checked, so both are refused.

def _rule_qdq(node, graph, opset, report):
    quantize = node.op_type == "QuantizeLinear"
    attrs = _attrs(node)
    data, scale_name = node.input[0], node.input[1] if len(node.input) > 1 else ""
    scale = graph.value(scale_name) if scale_name else None
    if scale is None:
        report(node, "the scale must be a constant for TensorRT")
    elif not np.all(scale > 0):
        report(node, "scales must all be positive for TensorRT")
    zero_name = node.input[2] if len(node.input) > 2 else ""
    if zero_name:
        zero = graph.value(zero_name)
        zero_type = graph.types.get(zero_name)
        if zero is None:
            report(node, "the zero point must be a constant for TensorRT")
        elif zero_type == onnx.TensorProto.UINT8:
            report(node, "UINT8 quantisation (asymmetric, onnxruntime's default for activations): TensorRT "
                         "quantises to signed INT8 only; quantise with QInt8 activations and weights, "
                         "symmetric")
        elif np.any(zero != 0):
            report(node, "non-zero zero point: TensorRT supports symmetric quantisation only")
    elif quantize and attrs.get("output_dtype", 0) not in (onnx.TensorProto.INT8,):
        report(node, "QuantizeLinear without a zero point quantises to UINT8 in ONNX but to INT8 in "
                     "TensorRT; give an INT8 zero point of 0")
    if not quantize:
        elem = graph.types.get(data)
        if elem is not None and elem not in SUPPORTED["DequantizeLinear"]:
            report(node, f"DequantizeLinear of {_type_name(elem)}: TensorRT dequantises INT8, FP8, INT4, FP4")
    if scale is not None and scale.size > 1:
        if not graph.is_constant(data):
            report(node, "per-channel scales on an activation: TensorRT quantises activations per tensor "
                         "only (per-channel is for weights)")
            return
        weights = graph.value(data)
        axis = attrs.get("axis", 1)
        if scale.ndim == 1 and weights is not None:
            axis = axis + weights.ndim if axis < 0 else axis
            if axis >= weights.ndim or weights.shape[axis] != scale.size:
                report(node, f"{scale.size} scales for axis {axis} of weights shaped {list(weights.shape)}")


_RULES = {
    "Conv": _rule_conv, "ConvTranspose": _rule_conv_transpose,
    "AveragePool": _rule_pool, "MaxPool": _rule_pool, "LpPool": _rule_pool,
    "Range": _rule_range, "Einsum": _rule_einsum, "LayerNormalization": _rule_layer_norm,
    "LSTM": _rule_lstm, "Resize": _rule_resize, "ScatterND": _rule_scatter_nd, "TopK": _rule_topk,
    "Dropout": _rule_dropout, "Constant": _rule_constant,
    "QuantizeLinear": _rule_qdq, "DequantizeLinear": _rule_qdq,
    # Matrix: axis/axes inputs that must be build-time constants.
    "CumSum": _needs_constant(1, "CumSum's axis"),
    "Squeeze": _needs_constant(1, "Squeeze's axes"),
    "Unsqueeze": _needs_constant(1, "Unsqueeze's axes"),
    # The TensorRT 10.0 matrix also asks these to be initializers (10.15 no
    # longer does); our exporter folds them, so hold every 10.x to it.
    "Slice": _needs_constant(3, "Slice's axes"),
    "Pad": _needs_constant(3, "Pad's axes"),
    **{op: _rule_reduce for op in SUPPORTED if op.startswith("Reduce")},
}


# ---- a bundle ----------------------------------------------------------------------

# The symbols of the manifest's shapes (dcae_deploy/runtime/manifest.py), from which
# tensorrt_build derives every profile.
SHAPE_SYMBOLS = ("H", "W", "h", "w", "zh", "zw")


def _check_contract(name: str, model: onnx.ModelProto, spec) -> list[Problem]:
    """Each graph input's ONNX dims agree with the manifest's shape, whose
    symbolic dims the builder can size."""
    out = []
    inputs = {i.name: i for i in model.graph.input}
    for tensor in spec.inputs:
        info = inputs.get(tensor.name)
        if info is None:
            out.append(Problem(name, "", "", f"input {tensor.name!r} of the manifest is not in the graph"))
            continue
        dims = info.type.tensor_type.shape.dim
        if len(dims) != len(tensor.shape):
            out.append(Problem(name, "", "", f"input {tensor.name!r} has rank {len(dims)}, "
                                             f"the manifest says {len(tensor.shape)}"))
            continue
        for axis, (dim, want) in enumerate(zip(dims, tensor.shape)):
            if isinstance(want, str) and want not in SHAPE_SYMBOLS:
                out.append(Problem(name, "", "", f"input {tensor.name!r} axis {axis} is {want!r}, "
                                                 f"not one of {', '.join(SHAPE_SYMBOLS)}: no profile for it"))
            elif isinstance(want, int) and dim.HasField("dim_value") and dim.dim_value != want:
                out.append(Problem(name, "", "", f"input {tensor.name!r} axis {axis} is {dim.dim_value}, "
                                                 f"the manifest says {want}"))
    return out


def check_bundle(bundle_dir) -> dict[str, list[Problem]]:
    """{graph name: problems} for every graph of the bundle, in graph order."""
    bundle_dir = Path(bundle_dir)
    manifest = Manifest.read(bundle_dir)
    opset = manifest.tools.get("opset")
    results = {}
    for name in graph_order(manifest.num_slices):
        spec = manifest.graphs[name]
        model = onnx.load(str(bundle_dir / spec.file))
        results[name] = _check_contract(name, model, spec) + check_graph(model, opset, name=name)
    return results


def summary(results: dict[str, list[Problem]]) -> str:
    """One line: how many graphs pass, and which do not."""
    failing = {name: len(errors(p)) for name, p in results.items() if errors(p)}
    warnings = sum(len(p) - len(errors(p)) for p in results.values())
    head = f"TensorRT static check (onnx-tensorrt matrix of TensorRT {TABLE_TENSORRT_VERSION}): "
    tail = f", {warnings} warning{'s' * (warnings != 1)}" if warnings else ""
    if not failing:
        return head + f"all {len(results)} graphs pass" + tail
    listed = ", ".join(f"{name} ({n})" for name, n in failing.items())
    return head + f"{sum(failing.values())} problems in {len(failing)} of {len(results)} graphs: {listed}" + tail


# ---- availability ------------------------------------------------------------------

def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT can build here (the `tensorrt` package imports and
    a CUDA GPU is visible); else what is missing, in one line."""
    from dcae_deploy.runtime.tensorrt_backend import tensorrt_unavailable_reason as reason

    return reason(need_cuda_python=False)
