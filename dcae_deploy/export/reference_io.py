"""The real inputs and outputs of every graph when the reference codes an image.

Runs the graph modules in pipeline order exactly as `DCAE.compress` does:
z_hat comes from decoding the z stream, y_hat_raw from the quantised symbols
plus mu, and each slice sees the refined y_hat of the slices before it. The
exporter checks each ONNX graph against these, and times the PyTorch side.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from dcae.model import DCAE

from .graphs import GraphDefinition


def _run(defn: GraphDefinition, inputs: dict[str, torch.Tensor], record: dict) -> dict[str, torch.Tensor]:
    t0 = time.perf_counter()
    with torch.no_grad():
        out = defn.module(*(inputs[n] for n in defn.inputs))
    elapsed = (time.perf_counter() - t0) * 1e3
    out = out if isinstance(out, tuple) else (out,)
    outputs = dict(zip(defn.outputs, out))
    record[defn.name] = {
        "inputs": {k: inputs[k].numpy().copy() for k in defn.inputs},
        "outputs": {k: v.numpy().copy() for k, v in outputs.items()},
        "torch_ms": elapsed,
    }
    return outputs


def reference_graph_io(model: DCAE, definitions: list[GraphDefinition], x: np.ndarray) -> dict[str, dict]:
    """x: float32 (1, 3, H, W) padded image -> {graph: {"inputs", "outputs", "torch_ms"}}."""
    defs = {d.name: d for d in definitions}
    record: dict[str, dict] = {}
    y = _run(defs["g_a"], {"x": torch.from_numpy(x)}, record)["y"]
    z = _run(defs["h_a"], {"y": y}, record)["z"]
    with torch.no_grad():
        z_strings = model.entropy_bottleneck.compress(z)
        z_hat = model.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
    hyper = _run(defs["h_s"], {"z_hat": z_hat}, record)
    y_hat_slices = []
    for i, y_slice in enumerate(y.chunk(model.num_slices, 1)):
        feeds = dict(hyper)
        if i:
            feeds["y_hat_prev"] = torch.cat(y_hat_slices, dim=1)
        params = _run(defs[f"slice_params_{i}"], feeds, record)
        with torch.no_grad():
            symbols = model.gaussian_conditional.quantize(y_slice, "symbols", params["mu"])
            y_hat_raw = symbols + params["mu"]
        refined = _run(defs[f"slice_lrp_{i}"], {"support": params["support"], "y_hat_raw": y_hat_raw}, record)
        y_hat_slices.append(refined["y_hat"])
    _run(defs["g_s"], {"y_hat": torch.cat(y_hat_slices, dim=1)}, record)
    return record
