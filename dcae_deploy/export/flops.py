"""FLOPs of each exported graph, counted once at export, for the benchmark's roofline.

`torch.utils.flop_counter.FlopCounterMode` runs each graph's PyTorch module
(the module the graph is traced from, without the export rewrites: nominal
FLOPs, not the Winograd form's fewer multiplies) on fake tensors (shapes
only, no arithmetic: a second or two even for the official model) of the
shapes of the export's two check sizes, and counts convolutions, transposed
convolutions and matrix products, a multiply-add as 2 FLOPs; elementwise
work (norms, activations, softmax) is not counted. Every graph's work is per pixel (convs,
windowed attention, the dictionary attention per latent position) or
constant (nothing here depends on the size otherwise), so the count at any
padded size is `constant + per_padded_pixel * H * W`, fitted exactly from
the two sizes: `flops_at` gives it, and a test checks it against a count at a
third size.
"""
from __future__ import annotations

import torch

METHOD = ("torch.utils.flop_counter.FlopCounterMode on each graph's PyTorch module (no export rewrites): "
          "convolutions and matrix products, a multiply-add = 2 FLOPs, elementwise ops not counted; at any "
          "padded size H x W: constant + per_padded_pixel * H * W, fitted from the two export check sizes")


def count_flops(module: torch.nn.Module, shapes: list) -> int:
    """FLOPs of one call of `module` on float32 inputs of `shapes`, without computing it."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    device = next(module.parameters()).device  # cpu, or meta for a model built without weights
    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
        inputs = [torch.empty(*shape, dtype=torch.float32, device=device) for shape in shapes]
        with FlopCounterMode(display=False) as counter:
            module(*inputs)
    return int(counter.get_total_flops())


def graph_flops(definitions, cases_by_size: list[dict]) -> dict:
    """{"method", "padded_sizes", "graphs": {name: {"HxW": flops, ..., "constant", "per_padded_pixel"}}}
    from the export's recorded graph inputs (`reference_io.reference_graph_io`) at two padded sizes."""
    sizes = [tuple(cases["g_a"]["inputs"]["x"].shape[-2:]) for cases in cases_by_size[:2]]
    (h0, w0), (h1, w1) = sizes
    if h0 * w0 == h1 * w1:
        raise ValueError(f"FLOPs need two check sizes of different areas, got {sizes}")
    p0, p1 = h0 * w0, h1 * w1
    graphs = {}
    for defn in definitions:
        counts = []
        for cases in cases_by_size[:2]:
            counts.append(count_flops(defn.module, [cases[defn.name]["inputs"][n].shape for n in defn.inputs]))
        per_pixel = (counts[1] - counts[0]) / (p1 - p0)
        graphs[defn.name] = {f"{h0}x{w0}": counts[0], f"{h1}x{w1}": counts[1],
                             "per_padded_pixel": per_pixel, "constant": counts[0] - per_pixel * p0}
    return {"method": METHOD, "padded_sizes": [list(s) for s in sizes], "graphs": graphs}


def flops_at(entry: dict, padded_height: int, padded_width: int) -> float:
    """One graph's FLOPs at a padded size, from its `graph_flops` entry."""
    return entry["constant"] + entry["per_padded_pixel"] * padded_height * padded_width
