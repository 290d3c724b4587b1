"""FP16 conversion of a graph with float32 inputs and outputs.

Weights and most activations go to float16; LayerNorm, Softmax and the whole
attention-score chain feeding each Softmax (the score MatMul, its scaling, the
relative-position bias and the shifted-window mask) stay float32, because
those overflow or lose the -inf mask in float16.
"""
from __future__ import annotations

from pathlib import Path

import onnx

KEEP_FP32_OPS = ["LayerNormalization", "Softmax"]
# ops walked back through from a Softmax to find its score computation
SCORE_CHAIN_OPS = {"Add", "Mul", "Div", "MatMul", "Where"}


def attention_score_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes computing each Softmax's input, back to its MatMul."""
    producer = {out: node for node in graph.node for out in node.output}
    keep = []
    for node in graph.node:
        if node.op_type != "Softmax":
            continue
        stack = [node.input[0]]
        while stack:
            src = producer.get(stack.pop())
            if src is None or src.op_type not in SCORE_CHAIN_OPS or src.name in keep:
                continue
            keep.append(src.name)
            if src.op_type != "MatMul":  # the score MatMul ends the chain
                stack.extend(src.input)
    return keep


def convert_to_fp16(src: str | Path, dst: str | Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    blocked = attention_score_nodes(model.graph)
    from onnxruntime.transformers.onnx_model import OnnxModel

    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=KEEP_FP32_OPS,
                                         node_block_list=blocked, disable_shape_infer=False)
    # the converter appends its input casts at the end of the node list
    wrapped = OnnxModel(converted)
    wrapped.topological_sort()
    onnx.save(wrapped.model, str(dst))
