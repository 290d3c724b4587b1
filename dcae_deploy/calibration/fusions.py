"""Graph fusions for the onnxruntime int8 form that onnxruntime does not make
from a QDQ graph itself.

`fuse_matmul_bias`: a Linear layer exports as MatMul + Add(bias). onnxruntime
turns DQ(x) -> MatMul <- DQ(W) into its MatMulIntegerToFloat kernel but leaves
the bias Add beside it, a separate pass over the layer's whole output; its
kernel takes the bias as an optional input and adds it while it writes the
scaled result. Written here as that one node (com.microsoft domain, which only
onnxruntime runs: the "tensorrt" form never gets it). On the official g_a at
768x512, 2 threads, the separate bias Adds took ~80 ms of its 940 ms
(onnxruntime's profiler); with this fusion, and the window attention's q/k/v
weights exported as constants (`dcae_deploy.export.rewrites`), g_a ran 955 -> 790 ms
and g_s 1290 -> 1105 ms (A/B of the two bundles' graphs, 4 alternating runs).

`fuse_gelu`: exact GELU exports as x / sqrt(2) -> Erf -> + 1 -> * x -> * 0.5.
onnxruntime fuses that into one Gelu kernel, except where x comes out of a
DequantizeLinear (a quantised conv's output): it first gives each of the DQ's
two consumers (the Div and the Mul) its own copy of the DQ, and the pattern no
longer matches. Then the GELU runs as five passes and the DQ as two. Written
here as com.microsoft Gelu, the kernel onnxruntime's own fusion makes. The
int8 entropy graphs have ten such GELUs per slice_params.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"


def _consumers(graph: onnx.GraphProto) -> dict[str, list]:
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _splice(model: onnx.ModelProto, replaced: dict[int, onnx.NodeProto], removed: set[int]) -> int:
    """Put each fused node in place of the node it replaces (by id), drop the
    removed ones and declare the com.microsoft domain; returns the fused count."""
    if not replaced:
        return 0
    nodes = [replaced.get(id(n), n) for n in model.graph.node if id(n) not in removed]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(replaced)


def fuse_matmul_bias(model: onnx.ModelProto) -> int:
    """Rewrite each DQ(x) -> MatMul <- DQ(constant W), followed by its only
    consumer Add(constant bias of W's width), as MatMulIntegerToFloat with that
    bias, in place. Returns how many were fused."""
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}

    def array(name: str) -> np.ndarray:  # converted only where a candidate needs it
        return numpy_helper.to_array(initializers[name])

    producer = {o: n for n in graph.node for o in n.output}
    consumers = _consumers(graph)
    graph_outputs = {o.name for o in graph.output}

    def dequantized(name: str):
        node = producer.get(name)
        return node if node is not None and node.op_type == "DequantizeLinear" and len(node.input) == 3 else None

    replaced: dict[int, onnx.NodeProto] = {}  # id(Add) -> fused node, put in its place
    removed: set[int] = set()
    for matmul in [n for n in graph.node if n.op_type == "MatMul"]:
        dq_x, dq_w = dequantized(matmul.input[0]), dequantized(matmul.input[1])
        users = consumers.get(matmul.output[0], [])
        if dq_x is None or dq_w is None or len(users) != 1 or users[0].op_type != "Add" \
                or matmul.output[0] in graph_outputs:
            continue
        add = users[0]
        bias_name = add.input[1] if add.input[0] == matmul.output[0] else add.input[0]
        weight_q, weight_scale, weight_zero = dq_w.input
        if not all(n in initializers for n in (bias_name, weight_q, weight_scale, weight_zero, *dq_x.input[1:])):
            continue
        weight, bias = array(weight_q), array(bias_name)
        # per-column weight scales only along W's output axis (axis 1 of a 2-D W)
        axis = next((a.i for a in dq_w.attribute if a.name == "axis"), 1)
        if weight.ndim != 2 or bias.shape != (weight.shape[1],) or bias.dtype != np.float32 \
                or (array(weight_scale).ndim == 1 and axis not in (1, -1)) \
                or array(dq_x.input[1]).ndim != 0:
            continue
        fused = helper.make_node(
            "MatMulIntegerToFloat",
            [dq_x.input[0], weight_q, dq_x.input[1], weight_scale, dq_x.input[2], weight_zero, bias_name],
            [add.output[0]], name=f"{matmul.name}/with_bias", domain=MS_DOMAIN)
        replaced[id(add)] = fused
        removed.add(id(matmul))
        for dq in (dq_x, dq_w):  # a DQ whose every consumer is fused away goes too
            if all(id(c) in removed for c in consumers.get(dq.output[0], [])) \
                    and dq.output[0] not in graph_outputs:
                removed.add(id(dq))
    return _splice(model, replaced, removed)


# the constants of the exported erf GELU: x / SQRT_2, + 1, * 0.5
_GELU_CONSTANTS = {"Div": np.sqrt(2.0), "Add": 1.0, "Mul": 0.5}


def fuse_gelu(model: onnx.ModelProto) -> int:
    """Rewrite each Div(x, sqrt 2) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5),
    whose inner results have no other consumer, as com.microsoft Gelu(x), in
    place. Returns how many were fused."""
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    consumers = _consumers(graph)
    graph_outputs = {o.name for o in graph.output}

    def only_consumer(node, op_type: str):
        users = consumers.get(node.output[0], [])
        ok = len(users) == 1 and users[0].op_type == op_type and node.output[0] not in graph_outputs
        return users[0] if ok else None

    def other_input_is(node, operand: str, value: float) -> bool:
        other = [name for name in node.input if name != operand]
        if len(other) != 1 or other[0] not in initializers:
            return False
        constant = numpy_helper.to_array(initializers[other[0]])
        return constant.size == 1 and np.isclose(float(constant), value, rtol=1e-6)

    replaced: dict[int, onnx.NodeProto] = {}
    removed: set[int] = set()
    for div in [n for n in graph.node if n.op_type == "Div"]:
        x = div.input[0]
        erf = only_consumer(div, "Erf") if other_input_is(div, x, _GELU_CONSTANTS["Div"]) else None
        add = only_consumer(erf, "Add") if erf is not None else None
        times_x = (only_consumer(add, "Mul") if add is not None
                   and other_input_is(add, erf.output[0], _GELU_CONSTANTS["Add"]) else None)
        if times_x is None or sorted(times_x.input) != sorted([x, add.output[0]]):
            continue
        half = only_consumer(times_x, "Mul")
        if half is None or not other_input_is(half, times_x.output[0], _GELU_CONSTANTS["Mul"]):
            continue
        replaced[id(half)] = helper.make_node("Gelu", [x], [half.output[0]], name=f"{div.name}/gelu", domain=MS_DOMAIN)
        removed.update(id(n) for n in (div, erf, add, times_x))
    return _splice(model, replaced, removed)
