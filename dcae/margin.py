"""A model's portable margin, computed by the reference from the model alone.

A portable `.dcae` file carries a margin delta (natural log of the scale):
every decoder whose scales lie within delta of the encoder's reads the
encoder's indexes (`dcae_deploy.runtime.portable`). How far a setup's float32
scales stray depends on the model as much as on the setup (the embedded
model's stay within ~8e-6 of float64 on every setup measured, the official
configuration with the golden weights strays up to 2.5e-4: docs/portable.md),
so delta belongs to the model. `model_margin` computes it from the model's own
arithmetic, in float64 only, so that it is the same on every machine, whatever
its CPU, kernels, thread count or installed backends:

1. the reference encodes the shipped sample photo (`MARGIN_IMAGE`, 384x256,
   also the export's check image) in float64: z_hat (quantised around the
   medians, as a decoder reads it) and every slice's symbols and scales
   (`float64_encoding`);
2. from that z_hat and those symbols it recomputes every slice's scales (h_s,
   the slice heads and LRP, as a decoder does) in a *simulated* float32: in
   float64 with the inputs and every operation's output rounded to float32
   and back (`Float32Rounding`). Rounding a float64 value to float32 is exact
   IEEE arithmetic, so this is the error that float32 rounding alone gives,
   the same on every CPU; a real float32 run adds its kernels' own rounding
   (the order they sum in), which differs by kernel set and thread count;
3. over the elements whose float64 scale lies within `MAX_MARGIN` of an index
   boundary (elsewhere no margin matters), the largest
   |ln sigma_simulated - ln sigma_float64| is the model's simulated float32
   error e;
4. delta = `MARGIN_FACTOR` x e, never under `DEFAULT_MARGIN`, rounded up to
   two significant digits (`margin_from_error`).

Float64 arithmetic differs between kernel sets (the order they sum in) by
~1e-16, far below the float32 rounding simulated (6e-8): e agreed to 8
significant digits between the AVX-512, AVX2 and SSE4.1 kernels, and to the
bit between one and two threads, so delta, rounded up to two digits, is the
same (docs/portable.md, "How delta is chosen"; `tests/test_margin.py`). It
runs on one thread all the same (the same bits on every run on a machine, and
the fastest on a busy one). The reference's encoders (`dcae.coding`) write it
by default and `dcae-export` records it in the bundle's manifest, so every
encoder of a model writes the same delta on every machine.
"""
from __future__ import annotations

import contextlib
import weakref
from pathlib import Path

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

import dcae_deploy.runtime
from dcae_deploy.runtime.entropy import decompress_z
from dcae_deploy.runtime.errors import BadInputError
from dcae_deploy.runtime.imaging import load_image, pad_image
from dcae_deploy.runtime.portable import DEFAULT_MARGIN, MAX_MARGIN

from .entropy_model import entropy_model_fingerprint, scale_thresholds

# The shipped sample photo (a 384x256 crop of Kodak's kodim23): the export's
# check image and the input the model's margin is computed on.
MARGIN_IMAGE = Path(dcae_deploy.runtime.__file__).resolve().parent / "samples" / "kodim23_crop_384x256.png"
# delta = MARGIN_FACTOR x e, e the model's simulated float32 error on
# MARGIN_IMAGE (the same on every machine). A file with margin delta is for
# setups within delta / 2 of float64, so delta / 2 must cover the farthest
# setup measured twice: delta >= 4 x its error on Kodak (any setup, any CPU:
# 7.9e-6 for the embedded model, the reference's AVX2 kernels on an Intel
# Xeon; 2.51e-4 for the official configuration with the golden weights,
# OpenVINO on an AVX2-only AMD EPYC; benchmarks/results/sigma_agreement*.md),
# and at least what `dcae-export` measured between the setups of a machine
# (4 x the largest pair: 4.1e-5, the floor, for the embedded model; up to
# 9.8e-4 for the golden weights). e (AMD EPYC with AVX-512; the same with
# every kernel set): embedded (fixed-rate weights) 1.98e-7, golden weights
# 4.21e-6, so the golden weights need a factor of at least 4 x 2.51e-4 /
# 4.21e-6 = 238: 240, which gives them delta = 1.1e-3 (240 e = 1.01e-3) and
# the embedded model 4.8e-5 (240 e = 4.76e-5; the shipped variable-rate
# weights: e = 1.92e-7, 4.7e-5), over the 4.1e-5 floor: simulated, the golden weights
# stray 21x as far as the embedded model, on real kernels 30 to 68x, so no one
# factor keeps both where the measurements put them; docs/portable.md).
MARGIN_FACTOR = 240.0

# model -> (entropy-model fingerprint, margin record): computing takes 2 s for
# the embedded model and 12 to 16 s for the official configuration (one
# thread of 2 busy cores), so it runs once per model object and again only
# when the weights of its entropy path change (the fingerprint every portable
# encode computes anyway; g_a and h_a, left out of it, only make the inputs).
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _to_float32(value):
    if isinstance(value, torch.Tensor) and value.dtype == torch.float64:
        return value.float().double()
    return value


class Float32Rounding(TorchFunctionMode):
    """Within it, every torch operation's float64 output is rounded to float32
    (and kept in float64): float64 modules compute as an ideal float32 run,
    every operation rounded once (modules' forward calls reach torch's
    functions, so convolutions, linear layers, norms, activations, attention's
    matmuls and softmax, residual additions and scalings are all rounded). An
    operation that writes into its first argument (`add_`, ReLU in place) is
    rounded in place."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            if out.dtype != torch.float64:
                return out
            if args and out is args[0]:
                return out.copy_(out.float())
            return out.float().double()
        if isinstance(out, (tuple, list)) and any(isinstance(o, torch.Tensor) for o in out):
            return type(out)(_to_float32(o) for o in out)
        return out


@torch.no_grad()
def torch_scales(model, z_hat: np.ndarray, symbols: np.ndarray, dtype=torch.float32,
                 simulate_float32: bool = False) -> np.ndarray:
    """All slices' scales from the reference in `dtype`, given z_hat and every
    slice's symbols (its own means and LRP feeding its later slices, as a
    decoder does); with `simulate_float32` (dtype float64), every operation's
    output rounded to float32 (`Float32Rounding`). The model is float32 again
    afterwards."""
    model = model.to(dtype)
    c = model.config.slice_channels
    recorded = []

    def decode_slice(i, scale):
        recorded.append(scale.double().numpy().copy())
        return torch.from_numpy(symbols[:, c * i : c * (i + 1)])

    try:
        with Float32Rounding() if simulate_float32 else contextlib.nullcontext():
            model.decode_slices(torch.from_numpy(z_hat).to(dtype), decode_slice)
    finally:
        model.float()
    return np.concatenate(recorded, axis=1)


@torch.no_grad()
def reference_encoding(model, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """(z_hat as every decoder reads it, the y symbols, `DCAE.compress`'s output) of one image."""
    x, _ = pad_image(pixels)
    out = model.compress(torch.from_numpy(x), return_latents=True)
    eb = model.entropy_bottleneck
    z_hat = decompress_z(out["strings"][1][0], out["shape"], eb.quantiles[:, 0, 1].detach().numpy(),
                         eb._quantized_cdf.numpy(), eb._cdf_length.numpy(), eb._offset.numpy())
    return z_hat, out["symbols"].numpy().astype(np.int32), out


@torch.no_grad()
def float64_encoding(model, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`DCAE.compress` in float64: (z_hat as a decoder reads it, float32; the y
    symbols, int32; every slice's float64 scales, the ones a float64 decoder
    computes from that z_hat and those symbols). The same on every machine,
    unlike a float32 encoding, whose z and y round otherwise on other kernels
    (a few symbols of the golden weights' differ). The model is float32 again
    afterwards."""
    x, _ = pad_image(pixels)
    model.double()
    try:
        y = model.g_a(torch.from_numpy(x).double())
        z = model.h_a(y)
        medians = model.entropy_bottleneck._get_medians().double()
        # as compressai's EntropyBottleneck: symbols round(z - median), z_hat = symbols + median (float32)
        z_hat = (torch.round(z - medians) + medians).float()
        latent_scales, latent_means = model.hyper_synthesis(z_hat.double())
        y_hat_slices, symbols, scales = [], [], []
        for i, y_slice in enumerate(y.chunk(model.num_slices, 1)):
            mu, scale, support = model.slice_params(i, latent_scales, latent_means, y_hat_slices)
            y_q = torch.round(y_slice - mu)  # GaussianConditional.quantize(y, "symbols", mu)
            symbols.append(y_q)
            scales.append(scale)
            y_hat_slices.append(model.slice_refine(i, support, y_q + mu))  # as DCAE.compress
    finally:
        model.float()
    return z_hat.numpy(), torch.cat(symbols, dim=1).numpy().astype(np.int32), torch.cat(scales, dim=1).numpy()


def near_boundaries(model, anchor: np.ndarray) -> np.ndarray:
    """Mask of the elements whose float64 scale is within `MAX_MARGIN` of an index boundary."""
    return scale_thresholds(model).nearest(anchor)[1] <= MAX_MARGIN


def largest_ln_difference(a: np.ndarray, b: np.ndarray, relevant: np.ndarray) -> float:
    d = np.abs(np.log(a[relevant]) - np.log(b[relevant]))
    return float(d.max()) if d.size else 0.0


def margin_from_error(error: float, factor: float = MARGIN_FACTOR) -> float:
    """The margin of a model whose simulated float32 scales stray `error`
    (|ln|) from float64 on `MARGIN_IMAGE`: `factor` times that, never under
    `DEFAULT_MARGIN`, rounded up to two significant digits."""
    wanted = max(DEFAULT_MARGIN, factor * float(error))
    if not np.isfinite(factor * float(error)) or wanted > MAX_MARGIN:
        raise BadInputError(f"this model's simulated float32 scales stray up to {error:.3g} (ln) from float64: no "
                            f"portable margin up to {MAX_MARGIN} covers that {factor:g} times")
    digits = 10.0 ** (np.floor(np.log10(wanted)) - 1)
    return min(MAX_MARGIN, float(f"{np.ceil(wanted / digits * (1 - 1e-9)) * digits:.2g}"))


def simulated_float32_error(model, pixels: np.ndarray) -> float:
    """The largest |ln sigma_simulated_float32 - ln sigma_float64| of the
    reference's slice scales near an index boundary, on `pixels` (uint8 H x W x 3),
    from the float64 encoding (`float64_encoding`), on one thread."""
    if next(model.parameters()).device.type != "cpu":
        raise BadInputError("a model's portable margin is computed on the CPU: move the model there first")
    threads, training = torch.get_num_threads(), model.training
    torch.set_num_threads(1)  # the result is the same on more (measured), but the same bits and time on one
    model.eval()
    try:
        z_hat, symbols, float64 = float64_encoding(model, pixels)
        simulated = torch_scales(model, z_hat, symbols, torch.float64, simulate_float32=True).reshape(-1)
    finally:
        torch.set_num_threads(threads)
        model.train(training)
    float64 = float64.reshape(-1)
    return largest_ln_difference(simulated, float64, near_boundaries(model, float64))


def margin_record(model, fingerprint: bytes | None = None) -> dict:
    """{"error", "error_of", "factor", "image"} and, where a margin up to
    `MAX_MARGIN` covers the model, "margin": what a bundle's manifest keeps
    under `portable` (the same on every machine). `fingerprint` is the
    model's entropy-model fingerprint where the caller has it (computed
    otherwise)."""

    fingerprint = fingerprint if fingerprint is not None else entropy_model_fingerprint(model)
    cached = _CACHE.get(model)
    if cached is None or cached[0] != fingerprint:
        error = simulated_float32_error(model, load_image(MARGIN_IMAGE))
        record = {"error": error, "error_of": "simulated float32 (float64, every operation rounded to float32)",
                  "factor": MARGIN_FACTOR, "image": MARGIN_IMAGE.name}
        try:
            record["margin"] = margin_from_error(error, MARGIN_FACTOR)
        except BadInputError:  # recorded without a margin: the model's files stay refused elsewhere
            pass
        cached = _CACHE[model] = (fingerprint, record)
    return dict(cached[1])


def model_margin(model, fingerprint: bytes | None = None) -> float:
    """The model's portable margin (see the module's doc); computed once per
    model object and weights. Raises `BadInputError` where no margin up to
    `MAX_MARGIN` covers the model."""
    record = margin_record(model, fingerprint)
    if "margin" not in record:
        margin_from_error(record["error"], record["factor"])  # raises, saying why
    return record["margin"]
