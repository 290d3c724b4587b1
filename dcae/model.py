"""The DCAE model: upstream's architecture, parameter names and coding, configurable.

`DCAE()` is the published configuration. The slice loop is split into
`slice_params` (the context model: mu, sigma and the support tensor) and
`slice_refine` (LRP), the same pieces the exporter turns into graphs and the
runtime drives, so there is one definition of each step.
"""
from __future__ import annotations

import contextlib
import math

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models import CompressionModel
from torch import Tensor, nn

from .config import DCAEConfig, get_config
from .layers import (
    DictionaryCrossAttention,
    ResidualBottleneckBlockWithStride,
    ResidualBottleneckBlockWithUpsample,
    SwinBlockWithConvMulti,
    conv,
    deconv,
    slice_head,
)

SCALES_MIN = 0.11
SCALES_MAX = 256
SCALES_LEVELS = 64


def get_scale_table() -> Tensor:
    """The 64 Gaussian scales, float32, as upstream computes them."""
    return torch.exp(torch.linspace(math.log(SCALES_MIN), math.log(SCALES_MAX), SCALES_LEVELS))


def ste_round(x: Tensor) -> Tensor:
    """Round in the forward pass, identity gradient."""
    return torch.round(x) - x.detach() + x


def check_padded_size(height: int, width: int, minimum: int = 256) -> None:
    """The network runs on sides that are multiples of 128. Coding also needs at
    least 256, the size upstream's decoder accepts; training crops may be 128."""
    for side in (height, width):
        if side % 128 or side < minimum:
            raise ValueError(
                f"padded input must have sides that are multiples of 128 and >= {minimum}, got {height}x{width}"
            )


class DCAE(CompressionModel):
    def __init__(self, config: DCAEConfig | str | None = None):
        super().__init__()
        if config is None:
            config = get_config("dcae")
        elif isinstance(config, str):
            config = get_config(config)
        self.config = cfg = config
        f0, f1, f2 = cfg.feature_dims
        b0, b1, b2 = cfg.swin_blocks
        r0, r1, r2 = cfg.res_blocks
        hd = cfg.head_dims
        win = cfg.window_size
        M, N, Z = cfg.M, cfg.N, cfg.z_channels
        self.num_slices = cfg.num_slices

        self.dt = nn.Parameter(torch.randn(cfg.dict_entries, cfg.dict_dim))
        self.dt_cross_attention = nn.ModuleList(
            DictionaryCrossAttention(
                2 * M + cfg.slice_channels * i, M, cfg.dict_heads, cfg.dict_head_dim, cfg.mlp_rate
            )
            for i in range(cfg.num_slices)
        )
        self.g_a = nn.Sequential(
            ResidualBottleneckBlockWithStride(3, f0, r0),
            SwinBlockWithConvMulti(f0, hd[0], win, b0),
            ResidualBottleneckBlockWithStride(f0, f1, r1),
            SwinBlockWithConvMulti(f1, hd[1], win, b1),
            ResidualBottleneckBlockWithStride(f1, f2, r2),
            SwinBlockWithConvMulti(f2, hd[2], win, b2),
            conv(f2, M, 5, 2),
        )
        self.g_s = nn.Sequential(
            deconv(M, f2, 5, 2),
            SwinBlockWithConvMulti(f2, hd[3], win, b2),
            ResidualBottleneckBlockWithUpsample(f2, f1, r2),
            SwinBlockWithConvMulti(f1, hd[4], win, b1),
            ResidualBottleneckBlockWithUpsample(f1, f0, r1),
            SwinBlockWithConvMulti(f0, hd[5], win, b0),
            ResidualBottleneckBlockWithUpsample(f0, 3, r0),
        )
        hwin, hhd, hres = cfg.hyper_window_size, cfg.hyper_head_dim, cfg.hyper_res_blocks
        self.h_a = nn.Sequential(
            ResidualBottleneckBlockWithStride(M, N, hres),
            SwinBlockWithConvMulti(N, hhd, hwin, 1),
            conv(N, Z, 3, 2),
        )
        self.h_z_s1 = nn.Sequential(
            deconv(Z, N, 3, 2), SwinBlockWithConvMulti(N, hhd, hwin, 1), ResidualBottleneckBlockWithUpsample(N, M, hres)
        )
        self.h_z_s2 = nn.Sequential(
            deconv(Z, N, 3, 2), SwinBlockWithConvMulti(N, hhd, hwin, 1), ResidualBottleneckBlockWithUpsample(N, M, hres)
        )
        sc = cfg.slice_channels
        self.cc_mean_transforms = nn.ModuleList(
            slice_head(3 * M + sc * i, cfg.head_hidden, sc) for i in range(cfg.num_slices)
        )
        self.cc_scale_transforms = nn.ModuleList(
            slice_head(3 * M + sc * i, cfg.head_hidden, sc) for i in range(cfg.num_slices)
        )
        self.lrp_transforms = nn.ModuleList(
            slice_head(3 * M + sc * (i + 1), cfg.head_hidden, sc) for i in range(cfg.num_slices)
        )
        self.entropy_bottleneck = EntropyBottleneck(Z)
        self.gaussian_conditional = GaussianConditional(None)

    # ---- the pieces of the pipeline (shared by forward, coding and export) ----

    def hyper_synthesis(self, z_hat: Tensor) -> tuple[Tensor, Tensor]:
        """z_hat -> (latent_scales, latent_means)."""
        return self.h_z_s1(z_hat), self.h_z_s2(z_hat)

    def slice_params(
        self, index: int, latent_scales: Tensor, latent_means: Tensor, y_hat_previous: list[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Context model of slice `index`: (mu, raw scale, support)."""
        query = torch.cat([latent_scales, latent_means] + list(y_hat_previous), dim=1)
        dict_info = self.dt_cross_attention[index](query, self.dt)
        support = torch.cat([query, dict_info], dim=1)
        mu = self.cc_mean_transforms[index](support)
        scale = self.cc_scale_transforms[index](support)
        return mu, scale, support

    def slice_refine(self, index: int, support: Tensor, y_hat_raw: Tensor) -> Tensor:
        """Latent residual prediction: y_hat_raw + 0.5 tanh(lrp([support, y_hat_raw]))."""
        lrp = self.lrp_transforms[index](torch.cat([support, y_hat_raw], dim=1))
        return y_hat_raw + 0.5 * torch.tanh(lrp)

    # ---- training / evaluation ----

    def update(self, scale_table=None, force: bool = False, update_quantiles: bool = False) -> bool:
        if scale_table is None:
            scale_table = get_scale_table()
        return super().update(scale_table=scale_table, force=force, update_quantiles=update_quantiles)

    def forward(self, x: Tensor, gain: Tensor | float | None = None) -> dict:
        """Training / evaluation pass. `gain` is the quantization gain a of the
        quality knob: each y slice is quantised as round((y - mu) * a), its
        likelihood is that of a Gaussian of scale sigma * a, and
        y_hat = q / a + mu feeds LRP and the later slices (None: a = 1, the
        fixed-rate model)."""
        check_padded_size(x.shape[-2], x.shape[-1], minimum=128)
        y = self.g_a(x)
        z = self.h_a(y)
        # Likelihoods in float32 also under autocast (bf16 training): the rate
        # term is a sum of logs of small probabilities.
        z = z.float()
        _, z_likelihoods = self.entropy_bottleneck(z)
        z_offset = self.entropy_bottleneck._get_medians()
        z_hat = ste_round(z - z_offset) + z_offset
        latent_scales, latent_means = self.hyper_synthesis(z_hat)

        y_hat_slices, y_likelihoods, means, scales = [], [], [], []
        for i, y_slice in enumerate(y.chunk(self.num_slices, 1)):
            mu, scale, support = self.slice_params(i, latent_scales, latent_means, y_hat_slices)
            mu, scale = mu.float(), scale.float()
            if gain is None:
                _, likelihood = self.gaussian_conditional(y_slice.float(), scale, mu)
                y_hat_raw = ste_round(y_slice - mu) + mu
            else:
                residual = (y_slice.float() - mu) * gain
                _, likelihood = self.gaussian_conditional(residual, scale * gain)
                y_hat_raw = ste_round(residual) / gain + mu
            y_hat_slices.append(self.slice_refine(i, support, y_hat_raw))
            y_likelihoods.append(likelihood)
            means.append(mu)
            scales.append(scale)

        x_hat = self.g_s(torch.cat(y_hat_slices, dim=1))
        return {
            "x_hat": x_hat,
            "likelihoods": {"y": torch.cat(y_likelihoods, dim=1), "z": z_likelihoods},
            "para": {"means": torch.cat(means, dim=1), "scales": torch.cat(scales, dim=1), "y": y},
        }

    # ---- entropy coding (upstream's signatures and byte format) ----

    def _gaussian_tables(self) -> tuple[list, list, list]:
        gc = self.gaussian_conditional
        if gc.quantized_cdf.numel() == 0:
            raise RuntimeError("entropy tables are empty: call update() first")
        return (
            gc.quantized_cdf.tolist(),
            gc.cdf_length.reshape(-1).int().tolist(),
            gc.offset.reshape(-1).int().tolist(),
        )

    @torch.no_grad()
    def compress(self, x: Tensor, return_latents: bool = False, gain: float = 1.0) -> dict:
        """x: (1, 3, H, W) in [0, 1], H and W padded. Returns upstream's
        {"strings": [[y_string], [z_string]], "shape": z size}; with
        `return_latents`, also the encoder's y_hat (after LRP), scale-table
        indexes, quantised symbols and the scales they were coded with.
        `gain`: the quality knob's quantization gain a (a float32 value; 1:
        upstream's coding)."""
        return self.code_slices(self.analyse(x), return_latents, gain)

    @torch.no_grad()
    def analyse(self, x: Tensor) -> dict:
        """The part of `compress` that no gain changes: g_a, h_a, the z stream
        and h_s's scales and means."""
        if x.shape[0] != 1:
            raise ValueError(f"compress codes one image at a time (batch 1), got batch {x.shape[0]}")
        check_padded_size(x.shape[-2], x.shape[-1])
        y = self.g_a(x)
        z = self.h_a(y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        latent_scales, latent_means = self.hyper_synthesis(z_hat)
        return {"y": y, "z_strings": z_strings, "shape": z.shape[-2:], "latent_scales": latent_scales,
                "latent_means": latent_means}

    @torch.no_grad()
    def code_slices(self, analysis: dict, return_latents: bool = False, gain: float = 1.0) -> dict:
        """The rest of `compress`: the slice loop and the y stream at gain a.
        At a != 1 each slice is coded as round((y - mu) * a) with the indexes
        of sigma * a, and y_hat = q / a + mu goes on, as in `forward`."""
        cdf, cdf_lengths, offsets = self._gaussian_tables()
        gc = self.gaussian_conditional
        symbols, indexes, y_hat_slices, index_maps, symbol_maps, scale_maps = [], [], [], [], [], []
        for i, y_slice in enumerate(analysis["y"].chunk(self.num_slices, 1)):
            mu, scale, support = self.slice_params(i, analysis["latent_scales"], analysis["latent_means"],
                                                   y_hat_slices)
            if gain == 1.0:
                y_q = gc.quantize(y_slice, "symbols", mu)
                y_hat_raw = y_q + mu
            else:
                scale = scale * gain
                y_q = torch.round((y_slice - mu) * gain).int()
                y_hat_raw = y_q.to(mu.dtype) / gain + mu
            index = gc.build_indexes(scale)
            symbols.extend(y_q.reshape(-1).tolist())
            indexes.extend(index.reshape(-1).tolist())
            index_maps.append(index)
            symbol_maps.append(y_q)
            scale_maps.append(scale)
            y_hat_slices.append(self.slice_refine(i, support, y_hat_raw))

        encoder = BufferedRansEncoder()
        encoder.encode_with_indexes(symbols, indexes, cdf, cdf_lengths, offsets)
        out = {"strings": [[encoder.flush()], analysis["z_strings"]], "shape": analysis["shape"]}
        if return_latents:
            out["y_hat"] = torch.cat(y_hat_slices, dim=1)
            out["indexes"] = torch.cat(index_maps, dim=1)
            out["symbols"] = torch.cat(symbol_maps, dim=1)
            out["scales"] = torch.cat(scale_maps, dim=1)
        return out

    @torch.no_grad()
    def decode_slices(self, z_hat: Tensor, decode_slice, timer=None, gain: float = 1.0) -> Tensor:
        """The decoder's slice loop: y_hat (after LRP) from z_hat, where
        `decode_slice(i, scale)` returns slice i's integer symbols (a tensor
        shaped like `scale`) given the scales this model computed for it,
        times the quantization gain a (symbols / a + mu go on).
        Entropy decoding, the portable side stream and measurements of the
        scales all plug in here, so the loop exists once. `timer(stage)`, a
        context manager, times the stages (h_s, slice_params_i,
        slice_coding_i, slice_lrp_i) for the benchmarks."""
        timer = timer or (lambda stage: contextlib.nullcontext())
        with timer("h_s"):
            latent_scales, latent_means = self.hyper_synthesis(z_hat)
        y_hat_slices = []
        for i in range(self.num_slices):
            with timer(f"slice_params_{i}"):
                mu, scale, support = self.slice_params(i, latent_scales, latent_means, y_hat_slices)
            with timer(f"slice_coding_{i}"):
                if gain == 1.0:
                    y_q = decode_slice(i, scale).to(dtype=mu.dtype, device=mu.device).reshape(mu.shape)
                    y_hat_raw = self.gaussian_conditional.dequantize(y_q, mu)
                else:
                    y_q = decode_slice(i, scale * gain).to(dtype=mu.dtype, device=mu.device).reshape(mu.shape)
                    y_hat_raw = y_q / gain + mu
            with timer(f"slice_lrp_{i}"):
                y_hat_slices.append(self.slice_refine(i, support, y_hat_raw))
        return torch.cat(y_hat_slices, dim=1)

    @torch.no_grad()
    def decompress(self, strings: list, shape) -> dict:
        """Inverse of `compress`; returns {"x_hat": (1, 3, H, W) clamped to [0, 1]}."""
        if len(strings[0]) != 1 or len(strings[1]) != 1:
            raise ValueError("decompress codes one image at a time (batch 1)")
        z_hat = self.entropy_bottleneck.decompress(strings[1], shape)
        cdf, cdf_lengths, offsets = self._gaussian_tables()
        decoder = RansDecoder()
        decoder.set_stream(strings[0][0])

        def decode_slice(i: int, scale: Tensor) -> Tensor:
            index = self.gaussian_conditional.build_indexes(scale)
            return torch.tensor(decoder.decode_stream(index.reshape(-1).tolist(), cdf, cdf_lengths, offsets))

        x_hat = self.g_s(self.decode_slices(z_hat, decode_slice)).clamp_(0, 1)
        return {"x_hat": x_hat}
