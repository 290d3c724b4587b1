"""The graph split: one small nn.Module per exported graph, each calling the
reference model's own pieces (`DCAE.slice_params`, `slice_refine`, ...), so the
graphs cannot drift from the reference.

Export-specific rewrites live here and are exact: the dictionary keys and
values of each slice's cross-attention, which depend on parameters only, are
computed once and stored as constants (`dt` folded).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dcae.model import DCAE
from dcae_deploy.runtime.manifest import graph_order


class EncoderAnalysis(nn.Module):  # g_a
    def __init__(self, model: DCAE):
        super().__init__()
        self.g_a = model.g_a

    def forward(self, x: Tensor) -> Tensor:
        return self.g_a(x)


class HyperAnalysis(nn.Module):  # h_a
    def __init__(self, model: DCAE):
        super().__init__()
        self.h_a = model.h_a

    def forward(self, y: Tensor) -> Tensor:
        return self.h_a(y)


class HyperSynthesis(nn.Module):  # h_s
    def __init__(self, model: DCAE):
        super().__init__()
        self.model = model

    def forward(self, z_hat: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.hyper_synthesis(z_hat)


class SliceParams(nn.Module):  # slice_params_i
    def __init__(self, model: DCAE, index: int):
        super().__init__()
        self.index = index
        self.attention = model.dt_cross_attention[index]
        self.cc_mean = model.cc_mean_transforms[index]
        self.cc_scale = model.cc_scale_transforms[index]
        with torch.no_grad():
            keys, values = self.attention.dictionary_keys_values(model.dt)
        self.register_buffer("dictionary_keys", keys.contiguous())
        self.register_buffer("dictionary_values", values.contiguous())

    def forward(self, latent_scales: Tensor, latent_means: Tensor, y_hat_prev: Tensor | None = None):
        # the same steps as DCAE.slice_params, with the dictionary precomputed
        parts = [latent_scales, latent_means] + ([y_hat_prev] if y_hat_prev is not None else [])
        query = torch.cat(parts, dim=1)
        dict_info = self.attention.attend(query, self.dictionary_keys, self.dictionary_values)
        support = torch.cat([query, dict_info], dim=1)
        return self.cc_mean(support), self.cc_scale(support), support


class SliceRefine(nn.Module):  # slice_lrp_i
    def __init__(self, model: DCAE, index: int):
        super().__init__()
        self.model = model
        self.index = index

    def forward(self, support: Tensor, y_hat_raw: Tensor) -> Tensor:
        return self.model.slice_refine(self.index, support, y_hat_raw)


class DecoderSynthesis(nn.Module):  # g_s
    def __init__(self, model: DCAE):
        super().__init__()
        self.g_s = model.g_s

    def forward(self, y_hat: Tensor) -> Tensor:
        return self.g_s(y_hat)


@dataclass
class GraphDefinition:
    name: str
    module: nn.Module
    inputs: list[str]
    outputs: list[str]
    # symbolic shape of each tensor, per name (see dcae_deploy/runtime/manifest.py)
    shapes: dict[str, list]


def graph_definitions(model: DCAE) -> list[GraphDefinition]:
    cfg = model.config
    M, Z, c = cfg.M, cfg.z_channels, cfg.slice_channels
    img, lat, hyp = ["H", "W"], ["h", "w"], ["zh", "zw"]
    defs = {
        "g_a": GraphDefinition("g_a", EncoderAnalysis(model), ["x"], ["y"],
                               {"x": [1, 3] + img, "y": [1, M] + lat}),
        "h_a": GraphDefinition("h_a", HyperAnalysis(model), ["y"], ["z"],
                               {"y": [1, M] + lat, "z": [1, Z] + hyp}),
        "h_s": GraphDefinition("h_s", HyperSynthesis(model), ["z_hat"], ["latent_scales", "latent_means"],
                               {"z_hat": [1, Z] + hyp, "latent_scales": [1, M] + lat,
                                "latent_means": [1, M] + lat}),
        "g_s": GraphDefinition("g_s", DecoderSynthesis(model), ["y_hat"], ["x_hat"],
                               {"y_hat": [1, M] + lat, "x_hat": [1, 3] + img}),
    }
    for i in range(cfg.num_slices):
        inputs = ["latent_scales", "latent_means"] + (["y_hat_prev"] if i else [])
        shapes = {"latent_scales": [1, M] + lat, "latent_means": [1, M] + lat, "y_hat_prev": [1, c * i] + lat,
                  "mu": [1, c] + lat, "scale": [1, c] + lat, "support": [1, 3 * M + c * i] + lat}
        defs[f"slice_params_{i}"] = GraphDefinition(f"slice_params_{i}", SliceParams(model, i), inputs,
                                                    ["mu", "scale", "support"],
                                                    {k: shapes[k] for k in inputs + ["mu", "scale", "support"]})
        defs[f"slice_lrp_{i}"] = GraphDefinition(
            f"slice_lrp_{i}", SliceRefine(model, i), ["support", "y_hat_raw"], ["y_hat"],
            {"support": shapes["support"], "y_hat_raw": [1, c] + lat, "y_hat": [1, c] + lat})
    return [defs[name] for name in graph_order(cfg.num_slices)]
