"""The PyTorch reference as a benchmark "backend", timed per stage.

The runtime never imports torch (DESIGN.md), so the PyTorch side of a
comparison lives here. `TorchReference.encode` / `.decode_streams` do exactly
what `DCAE.compress` / `.decompress` do, step for step and with the model's
own pieces (`slice_params`, `slice_refine`, the compressai entropy models and
rANS coder), so they write and read the same bytes (tests/test_bench.py
checks it against `dcae.compress_image` / `dcae.decompress_image`). The only
additions are timers around each step, under the stage names of
`dcae_deploy.runtime.codec.Codec.last_timings`, and the decoded symbols, which let the
decodability matrix tell a correct decode from a silently wrong one exactly.

`compile=True` is what a user who keeps PyTorch would do instead of the
runtime: `torch.compile` (inductor, default mode) on every network the
pipeline runs (`compile_model`). Compilation happens at the first call of
each piece, per input shape.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder

from dcae.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from dcae.coding import decode_dcae, portable_encoding, rate_levels
from dcae_deploy.runtime.container import GAIN_CODE_ONE, gain_of, pack, pack_bin
from dcae_deploy.runtime.errors import BackendUnavailableError, BadInputError
from dcae_deploy.runtime.geometry import z_shape_for
from dcae_deploy.runtime.imaging import crop_to_uint8, load_image, pad_image
from dcae_deploy.runtime.manifest import sha256_file
from dcae_deploy.runtime.portable import MODEL_MARGIN
from dcae_deploy.runtime.quality import RateChoice
from dcae_deploy.runtime.timing import timed

# compressai's RansDecoder reads its stream without bounds checks. A decoder
# out of sync (a foreign stream) can read past the end: at most one 32-bit
# word per symbol, plus escapes. Zero words appended after the stream are
# never read by a decoder in sync, and keep a desynced one inside our buffer.
_OVERRUN_WORDS_PER_SYMBOL = 2


# What the torch-compile setup compiles (`compile_model`): every network the
# coding pipeline runs. The slice pieces are the model's own `slice_params` /
# `slice_refine` (context model with the dictionary attention and the mean /
# scale heads; LRP), compiled whole per slice, so inductor fuses the
# concatenations and elementwise work around the convolutions.
COMPILED_PARTS = ("g_a", "h_a", "hyper_synthesis", "slice_params", "slice_refine", "g_s")
# Distinct graphs per image shape: g_a, h_a, g_s (nn.Sequential.forward),
# hyper_synthesis, and one per slice for slice_params and slice_refine; dynamo's
# default of 8 cached graphs per function would silently send the rest to eager
# once a second image shape comes.
RECOMPILE_LIMIT = 64


def compile_model(model, parts=COMPILED_PARTS) -> list[str]:
    """Apply `torch.compile` (inductor, default mode, static shapes: one graph
    per image size, as a fixed-size deployment would) in place: nn.Module
    parts with `Module.compile`, so `state_dict` keys (and the entropy-model
    fingerprint of portable files) stay as they are; methods as instance
    attributes that shadow them, so `DCAE.compress` / `decode_slices` call
    the compiled ones. Returns the parts compiled."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for part in parts:
        target = getattr(model, part)
        if isinstance(target, torch.nn.Module):
            target.compile(dynamic=False)
        else:
            setattr(model, part, torch.compile(target, dynamic=False))
    return list(parts)


def check_compiler() -> None:
    """torch.compile on the CPU builds C++ kernels: refuse early without a compiler."""
    import shutil

    from torch._inductor import config

    candidates = [c for c in (config.cpp.cxx if isinstance(config.cpp.cxx, tuple) else (config.cpp.cxx,)) if c]
    if not any(shutil.which(c) for c in candidates + ["g++", "c++", "clang++"]):
        raise BackendUnavailableError("torch-compile unavailable: torch.compile (inductor) needs a C++ compiler "
                                      "on PATH (g++ or clang++)")


class ReferenceMismatchError(ValueError):
    """The checkpoint is not the model a bundle was exported from."""


@dataclass
class ReferenceEncoded:
    data: bytes  # portable .dcae on the CPU; upstream .bin on a GPU
    y: bytes
    z: bytes
    height: int
    width: int
    y_hat: np.ndarray  # float32 (1, M, h, w)
    indexes: np.ndarray  # int32 (1, M, h, w)
    symbols: np.ndarray  # int32 (1, M, h, w): round((y - mu) * a)
    gain_code: int = GAIN_CODE_ONE  # the quality knob's gain a, as the header carries it


@dataclass
class ReferenceDecoded:
    x: np.ndarray  # uint8 (H, W, 3)
    y_hat: np.ndarray
    symbols: np.ndarray  # int32 (1, M, h, w) as the decoder read them


class TorchReference:
    """`DCAE` from a checkpoint, with `Codec`-like encode / decode and timings.

    `device="cuda"` runs the model on the GPU, as upstream's scripts do; the
    entropy coding stays compressai's CPU coder either way."""

    def __init__(self, checkpoint: str | Path | None = None, threads: int | None = None, device: str = "cpu",
                 compile: bool = False):
        if threads:
            torch.set_num_threads(threads)
        if device not in ("cpu", "cuda"):
            raise ValueError(f"unknown PyTorch device {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("torch-cuda unavailable: PyTorch sees no CUDA GPU on this machine")
        if compile:
            check_compiler()
        self.device = torch.device(device)
        self.numeric_class = f"torch-compile-{device}" if compile else f"torch-{device}"
        self.checkpoint = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
        self.model = load_checkpoint(self.checkpoint).to(self.device)
        self.compiled = compile_model(self.model) if compile else []
        self.preset = getattr(self.model, "preset", None)
        # The margin of its portable files: the model's own (`dcae.margin`), which
        # a bundle of this model (`check_matches`) records too.
        self.margin = MODEL_MARGIN
        self.rate_levels = rate_levels(self.model)
        self.last_timings: dict[str, float] = {}

    @property
    def config(self) -> dict:
        return self.model.config.to_dict()

    def sha256(self) -> str:
        return sha256_file(self.checkpoint)

    def check_matches(self, manifest) -> str | None:
        """Refuse a bundle exported from another model; return a note when the
        bundle does not record its source checkpoint (weights unverifiable).
        A matching bundle's margin (the model's own, recorded at export) becomes this encoder's."""
        if manifest.model.get("config") != self.config:
            differing = sorted(k for k in self.config if manifest.model["config"].get(k) != self.config[k])
            raise ReferenceMismatchError(
                f"checkpoint {self.checkpoint} (preset {self.preset}) has another configuration than the "
                f"bundle (preset {manifest.model.get('preset')}; fields {', '.join(differing)} differ): "
                f"pass the bundle's checkpoint with --checkpoint, or leave torch out of --backends")
        recorded = manifest.source_checkpoint_sha256
        if recorded is not None and recorded != self.sha256():
            raise ReferenceMismatchError(
                f"checkpoint {self.checkpoint} is not the one the bundle was exported from "
                f"(sha256 {self.sha256()[:16]}, the bundle records {recorded[:16]}): pass that file with "
                f"--checkpoint, or leave torch out of --backends")
        self.margin = manifest.portable_margin
        if recorded is None:
            return (f"bundle (preset {manifest.model.get('preset')}) records no source checkpoint: "
                    f"the PyTorch reference ({self.checkpoint.name}) has its configuration, but its weights "
                    f"cannot be verified")
        return None

    @contextlib.contextmanager
    def _timed(self, stage: str):
        with timed(self.last_timings, stage):
            yield
            if self.device.type == "cuda":  # kernels run asynchronously: a stage ends when they do
                torch.cuda.synchronize()

    def _tables(self):
        return self.model._gaussian_tables()

    @property
    def codes_qualities(self) -> bool:
        """Whether this encoder writes other rates than the reference one:
        upstream's .bin (on a GPU) has no gain field."""
        return self.device.type == "cpu"

    # ---- encoder: DCAE.compress with timers --------------------------------------------

    @torch.no_grad()
    def encode(self, image, quality: float | None = None) -> ReferenceEncoded:
        """`DCAE.compress` at `quality` (0..100, default 50), as
        `dcae.coding.encode_image(..., format="dcae", quality=...)` codes it:
        `DCAE.code_slices`' arithmetic at the gain a of the model's rate levels."""
        gain_code = RateChoice(quality).gain_code(self.rate_levels)
        if gain_code != GAIN_CODE_ONE and not self.codes_qualities:
            raise BadInputError("upstream's .bin (the reference on a GPU) codes the reference rate only")
        gain = gain_of(gain_code)
        self.last_timings = {}
        started = time.perf_counter()
        model, gc = self.model, self.model.gaussian_conditional
        timed = self._timed
        with timed("load"):
            pixels = load_image(image)
            height, width = pixels.shape[:2]
            x = torch.from_numpy(pad_image(pixels)[0]).to(self.device)
        with timed("g_a"):
            y = model.g_a(x)
        with timed("h_a"):
            z = model.h_a(y)
        with timed("z_coding"):
            z_strings = model.entropy_bottleneck.compress(z)
            z_hat = model.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        with timed("h_s"):
            latent_scales, latent_means = model.hyper_synthesis(z_hat)
        cdf, cdf_lengths, offsets = self._tables()

        symbols, y_hat_slices, index_maps, symbol_maps, scale_maps = [], [], [], [], []
        for i, y_slice in enumerate(y.chunk(model.num_slices, 1)):
            with timed(f"slice_params_{i}"):
                mu, scale, support = model.slice_params(i, latent_scales, latent_means, y_hat_slices)
            with timed(f"slice_coding_{i}"):
                if gain == 1.0:
                    y_q = gc.quantize(y_slice, "symbols", mu)
                    y_hat_raw = y_q + mu
                else:  # DCAE.code_slices' expressions, so that the bytes are the model's
                    scale = scale * gain
                    y_q = torch.round((y_slice - mu) * gain).int()
                    y_hat_raw = y_q.to(mu.dtype) / gain + mu
                index = gc.build_indexes(scale)
                symbols.extend(y_q.reshape(-1).tolist())
                index_maps.append(index)
                symbol_maps.append(y_q)
                scale_maps.append(scale)
            with timed(f"slice_lrp_{i}"):
                y_hat_slices.append(model.slice_refine(i, support, y_hat_raw))

        index_map = torch.cat(index_maps, 1).cpu().numpy().astype(np.int32)
        header = None
        if self.device.type == "cpu":
            with timed("side_stream"):
                header, portable = portable_encoding(model, height, width,
                                                     torch.cat(scale_maps, 1).float().cpu().numpy(), index_map,
                                                     self.margin, gain_code)
                index_map, side = portable.indexes, portable.side
        with timed("y_coding"):
            encoder = BufferedRansEncoder()
            encoder.encode_with_indexes(symbols, index_map.reshape(-1).tolist(), cdf, cdf_lengths, offsets)
            y_string = encoder.flush()
        if header is not None:
            data = pack(header, z_strings[0], y_string, side)
        else:  # no measured scale error bound on a GPU: upstream's format, for this setup only
            data = pack_bin(height, width, y_string, z_strings[0])
        self.last_timings["total"] = time.perf_counter() - started
        return ReferenceEncoded(
            data, y_string, z_strings[0], height, width, torch.cat(y_hat_slices, 1).cpu().numpy(),
            index_map, torch.cat(symbol_maps, 1).cpu().numpy().astype(np.int32), gain_code)

    def compress(self, image, quality: float | None = None) -> bytes:
        return self.encode(image, quality).data

    # ---- decoders -----------------------------------------------------------------------

    def decode_portable(self, data: bytes, synthesize: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
        """A portable .dcae through `dcae.coding.decode_dcae`, timed by stage:
        (pixels, or None without `synthesize`; symbols in stream order)."""
        self.last_timings = {}
        started = time.perf_counter()
        result = decode_dcae(self.model, data, self._timed, synthesize)
        self.last_timings["total"] = time.perf_counter() - started
        return result

    @torch.no_grad()
    def decode_streams(self, y: bytes, z: bytes, height: int, width: int,
                       synthesize: bool = True) -> ReferenceDecoded:
        """Decode like `DCAE.decompress`: no desync check exists there, so a
        foreign stream decodes to whatever it decodes to. Without `synthesize`
        g_s does not run (pixels None)."""
        self.last_timings = {}
        started = time.perf_counter()
        model, gc = self.model, self.model.gaussian_conditional
        timed = self._timed
        with timed("z_coding"):
            z_hat = model.entropy_bottleneck.decompress([z], z_shape_for(height, width))
        with timed("h_s"):
            latent_scales, latent_means = model.hyper_synthesis(z_hat)
        h, w = z_hat.shape[2] * 4, z_hat.shape[3] * 4
        cdf, cdf_lengths, offsets = self._tables()
        decoder = RansDecoder()
        n_symbols = model.config.M * h * w
        decoder.set_stream(y + bytes(4 * _OVERRUN_WORDS_PER_SYMBOL * n_symbols))

        y_hat_slices, symbol_maps = [], []
        for i in range(model.num_slices):
            with timed(f"slice_params_{i}"):
                mu, scale, support = model.slice_params(i, latent_scales, latent_means, y_hat_slices)
            with timed(f"slice_coding_{i}"):
                index = gc.build_indexes(scale)
                values = decoder.decode_stream(index.reshape(-1).tolist(), cdf, cdf_lengths, offsets)
                y_q = torch.tensor(values, dtype=mu.dtype, device=mu.device).reshape(1, -1, h, w)
                # (kept apart: compressai's dequantize adds mu to a float y_q in place)
                symbol_maps.append(np.asarray(values, np.int32).reshape(1, -1, h, w))
                y_hat_raw = gc.dequantize(y_q, mu)
            with timed(f"slice_lrp_{i}"):
                y_hat_slices.append(model.slice_refine(i, support, y_hat_raw))

        y_hat = torch.cat(y_hat_slices, dim=1)
        pixels = None
        if synthesize:
            with timed("g_s"):
                x_hat = model.g_s(y_hat).clamp_(0, 1)
            with timed("crop"):
                pixels = crop_to_uint8(x_hat.cpu().numpy(), height, width)
        self.last_timings["total"] = time.perf_counter() - started
        return ReferenceDecoded(pixels, y_hat.cpu().numpy(), np.concatenate(symbol_maps, axis=1))
