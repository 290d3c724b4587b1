"""Image-level coding with the PyTorch reference: upstream's `.bin` and portable `.dcae`.

`compress_image` accepts any image the runtime's loader accepts (path, PIL,
array; grayscale, palette, RGBA, 16-bit), pads it to the model's size rule,
codes it with `DCAE.compress`, and writes upstream's `.bin` layout (files from
the upstream scripts decode here and ours decode there) or, with
`format="dcae"`, a portable `.dcae` that every setup decodes (the runtime on
any backend, the C++ host, this reference on another CPU family): its side
stream lists the elements whose scale lies near an index boundary
(`dcae_deploy.runtime.portable`). `decompress_image` reads both formats; `.dcae` files are
decoded with the runtime's rANS decoder, which checks the stream ends in sync.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from dcae_deploy.runtime.container import (GAIN_CODE_ONE, DcaeHeader, gain_of, pack, pack_bin, sniff, unpack,
                                            unpack_bin)
from dcae_deploy.runtime.entropy import build_indexes, decompress_z
from dcae_deploy.runtime.errors import BadInputError, FingerprintMismatchError
from dcae_deploy.runtime.geometry import z_shape_for
from dcae_deploy.runtime.imaging import crop_to_uint8, load_image, pad_image
from dcae_deploy.runtime.portable import (MODEL_MARGIN, PortableDecoding, PortableEncoding, encode_portable,
                              margin_covers)
from dcae_deploy.runtime.quality import RateChoice, RateLevels, code_at_rate
from dcae_deploy.runtime.rans import RansStreamDecoder, encode_with_indexes

from .entropy_model import entropy_model_fingerprint, scale_thresholds  # noqa: F401  (re-exported)
from .margin import model_margin
from .model import DCAE

FORMATS = ("bin", "dcae")
# |ln sigma_torch - ln sigma_float64| of the reference's fp32 slice scales on
# the CPU, near index boundaries: measured at most 3.8e-6 with AVX-512 kernels
# and 7.9e-6 with AVX2 ones (embedded model, 24 Kodak images:
# benchmarks/results/sigma_agreement.md, `python -m dcae_deploy.bench.sigma_agreement`;
# 2.2e-6 and 4.8e-6 with its earlier weights, stated with a margin of 2x).
TORCH_CPU_SIGMA_ERROR_BOUND = 1e-5


def _device_of(model: DCAE) -> torch.device:
    return next(model.parameters()).device


def sigma_error_bound(model: DCAE) -> float:
    """The reference's stated scale error on its device (see
    `TORCH_CPU_SIGMA_ERROR_BOUND`); refuses where none was measured."""
    device = _device_of(model)
    if device.type != "cpu":
        raise BadInputError(f"portable .dcae coding with the reference on {device.type} has no measured "
                            f"scale error bound; code on the CPU or with the runtime")
    return TORCH_CPU_SIGMA_ERROR_BOUND


def compress_image(model: DCAE, image, format: str = "bin", margin: float | str = MODEL_MARGIN,
                   quality: float | None = None, max_bytes: int | None = None,
                   target_bpp: float | None = None) -> bytes:
    """Image -> upstream `.bin` bytes, or a portable `.dcae` with `format="dcae"`
    whose side stream covers decoders within `margin` (natural log) of these
    scales. The default, `MODEL_MARGIN`, is the model's own margin
    (`dcae.margin.model_margin`: computed once per model, the one its bundles
    record); a number overrides it.

    The rate of a `.dcae`: at most one of `quality` (0..100; default 50, the
    model's reference rate), `max_bytes` and `target_bpp` (rate control), as
    in the runtime (`dcae_deploy.runtime.quality`). Upstream's `.bin` has no
    gain field: it is coded at the reference rate only."""
    return encode_image(model, image, format, margin, quality, max_bytes, target_bpp)[0]


def rate_levels(model: DCAE) -> RateLevels:
    """The model's quality knob: its trained rate levels, or the untrained rule."""
    return RateLevels.from_record(getattr(model, "rate_levels", None))


def encode_image(model: DCAE, image, format: str = "bin", margin: float | str = MODEL_MARGIN,
                 quality: float | None = None, max_bytes: int | None = None,
                 target_bpp: float | None = None) -> tuple[bytes, dict]:
    """`compress_image`, also returning `DCAE.compress`'s output with the latents
    (y_hat, indexes, symbols, scales) and the gain code it was coded at."""
    if format not in FORMATS:
        raise BadInputError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    rate = RateChoice(quality, max_bytes, target_bpp)
    pixels = load_image(image)
    height, width = pixels.shape[:2]
    levels = rate_levels(model)
    if format == "bin" and (rate.controlled or rate.gain_code(levels) != GAIN_CODE_ONE):
        raise BadInputError("upstream's .bin codes the reference rate only: use format='dcae' for another quality")
    x, _ = pad_image(pixels)
    analysis = model.analyse(torch.from_numpy(x).to(_device_of(model)))
    if format == "bin":
        out = model.code_slices(analysis, return_latents=True)
        return pack_bin(height, width, out["strings"][0][0], out["strings"][1][0]), out
    if isinstance(margin, str) and margin == MODEL_MARGIN:
        margin = model_margin(model, entropy_model_fingerprint(model))  # once, not per rate-control try

    def code(gain_code: int) -> tuple[bytes, dict]:
        out = model.code_slices(analysis, return_latents=True, gain=gain_of(gain_code))
        out["gain_code"] = gain_code
        data = pack_portable(model, height, width, out["strings"][1][0], out["symbols"].cpu().numpy(),
                             out["scales"].float().cpu().numpy(), out["indexes"].cpu().numpy(), margin, gain_code)
        return data, out

    return code_at_rate(code, lambda coded: len(coded[0]), rate, levels, height, width)[0]


def pack_portable(model: DCAE, height: int, width: int, z_stream: bytes, symbols: np.ndarray, scales: np.ndarray,
                  indexes: np.ndarray, margin: float | str = MODEL_MARGIN, gain_code: int = GAIN_CODE_ONE) -> bytes:
    """A portable `.dcae` of the reference's y `symbols` and z stream: the y
    stream coded with the indexes of the threshold shifts that `scales` (the
    encoder's, times the gain) call for, and the side stream of the elements
    within `margin` of an index boundary."""
    header, portable = portable_encoding(model, height, width, scales, indexes, margin, gain_code)
    gc = model.gaussian_conditional
    y_stream = encode_with_indexes(symbols.reshape(-1), portable.indexes.reshape(-1), gc.quantized_cdf.cpu().numpy(),
                                   gc.cdf_length.cpu().numpy(), gc.offset.cpu().numpy())
    return pack(header, z_stream, y_stream, portable.side)


def portable_encoding(model: DCAE, height: int, width: int, scales: np.ndarray, indexes: np.ndarray,
                      margin: float | str = MODEL_MARGIN,
                      gain_code: int = GAIN_CODE_ONE) -> tuple[DcaeHeader, PortableEncoding]:
    """The header of a portable `.dcae` and, from the encoder's `scales` and
    unshifted `indexes`, the indexes to code y with and the side stream
    (`dcae_deploy.runtime.portable.encode_portable`). `MODEL_MARGIN` stands
    for the model's own margin (`dcae.margin.model_margin`)."""
    error_bound = sigma_error_bound(model)  # before any work: refuses a device without a measured bound
    fingerprint = entropy_model_fingerprint(model)
    if isinstance(margin, str):
        if margin != MODEL_MARGIN:
            raise BadInputError(f"margin must be a number or {MODEL_MARGIN!r}, got {margin!r}")
        margin = model_margin(model, fingerprint)
    header = DcaeHeader(height, width, fingerprint, margin=margin, gain_code=gain_code)
    if not margin_covers(header.margin, error_bound):
        raise BadInputError(f"margin {margin:g} is under twice this encoder's scale error bound")
    return header, encode_portable(scales, indexes, scale_thresholds(model), header.margin)


def decompress_image(model: DCAE, data: bytes) -> np.ndarray:
    """Upstream `.bin` or portable `.dcae` bytes -> uint8 (H, W, 3)."""
    data = bytes(data)
    if sniff(data) != "dcae":
        parsed = unpack_bin(data)
        x_hat = model.decompress([[parsed.y], [parsed.z]], z_shape_for(parsed.height, parsed.width))["x_hat"]
        return crop_to_uint8(x_hat.float().cpu().numpy(), parsed.height, parsed.width)
    return decode_dcae(model, data)[0]


@torch.no_grad()
def decode_dcae(model: DCAE, data: bytes, timer=None,
                synthesize: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """A portable `.dcae` -> (uint8 (H, W, 3), the y symbols in stream order),
    or (None, symbols) without `synthesize` (g_s skipped); raises the
    runtime's errors (`FingerprintMismatchError`, `CorruptStreamError`,
    `MarginError`, `DesyncError`) rather than returning noise. `timer(stage)`,
    a context manager, times the stages (see `DCAE.decode_slices`)."""
    timer = timer or (lambda stage: contextlib.nullcontext())
    parsed = unpack(data)
    header = parsed.header
    if not header.portable:
        raise FingerprintMismatchError("this .dcae file is not portable: it decodes only with the runtime "
                                       "setup that wrote it")
    if header.fingerprint != entropy_model_fingerprint(model):
        raise FingerprintMismatchError("this .dcae file was written with another model (entropy-model "
                                       "fingerprint differs)")
    error_bound = sigma_error_bound(model)
    if not margin_covers(header.margin, error_bound):
        raise FingerprintMismatchError(f"the file's margin {header.margin:g} is under twice this decoder's "
                                       f"scale error bound {error_bound:g}")
    eb, gc = model.entropy_bottleneck, model.gaussian_conditional
    ph, pw = header.padded_size
    slice_size = model.config.slice_channels * (ph // 16) * (pw // 16)
    with timer("z_coding"):
        z_hat = decompress_z(parsed.z, header.z_shape, eb.quantiles[:, 0, 1].detach().cpu().numpy(),
                             eb._quantized_cdf.cpu().numpy(), eb._cdf_length.cpu().numpy(),
                             eb._offset.cpu().numpy())
        table, bound = gc.scale_table.cpu().numpy(), float(gc.lower_bound_scale.bound)
        portable = PortableDecoding(parsed.side, slice_size * model.num_slices, scale_thresholds(model),
                                    header.margin)
    tables = (gc.quantized_cdf.cpu().numpy(), gc.cdf_length.cpu().numpy(), gc.offset.cpu().numpy())
    decoder = RansStreamDecoder(parsed.y)
    symbols = []

    def decode_slice(i: int, scale: torch.Tensor) -> torch.Tensor:
        scales = scale.float().cpu().numpy()
        indexes = build_indexes(scales, table, bound)
        portable.apply(i * slice_size, scales, indexes)
        symbols.append(decoder.decode(indexes.reshape(-1), *tables))
        return torch.from_numpy(symbols[-1])

    y_hat = model.decode_slices(torch.from_numpy(z_hat).to(_device_of(model)), decode_slice, timer, header.gain)
    with timer("y_coding"):
        decoder.finish()
    if not synthesize:
        return None, np.concatenate(symbols)
    with timer("g_s"):
        x_hat = model.g_s(y_hat).clamp_(0, 1)
    with timer("crop"):
        pixels = crop_to_uint8(x_hat.float().cpu().numpy(), header.height, header.width)
    return pixels, np.concatenate(symbols)
