"""compressai's entropy-model arithmetic in numpy, for the torch-free runtime.

- `build_indexes`: GaussianConditional.build_indexes (scale -> table index).
- `quantize_symbols` / `dequantize`: EntropyModel.quantize(..., "symbols") and
  EntropyModel.dequantize with means; with the quality knob's gain a
  (`dcae_deploy.runtime.quality`), round((y - means) * a) and symbols / a +
  means, and `coded_scales` gives the scales sigma * a the indexes come from.
- `compress_z` / `decompress_z`: EntropyBottleneck.compress / .decompress for
  batch 1, with the bottleneck's tables passed in as arrays.

All of it is bit-identical to compressai 1.2.8 on float32 inputs.
"""
from __future__ import annotations

import numpy as np

from dcae_deploy.runtime.errors import BadInputError
from dcae_deploy.runtime.rans import RansStreamDecoder, encode_with_indexes

# GaussianConditional's default `scale_bound`: scales are clamped to at least
# float32(0.11) (a LowerBound buffer) before the table lookup.
DEFAULT_SCALE_BOUND = 0.11
# Quantised values must convert to int32 exactly; the rANS coder cannot code
# anything near this far from a table anyway.
_MAX_ABS_SYMBOL = float(1 << 30)


def build_indexes(scales, scale_table, scale_bound: float = DEFAULT_SCALE_BOUND) -> np.ndarray:
    """The scale-table index of each scale, as int32.

    compressai computes `len(table) - 1 - sum_t [max(s, bound) <= t]` over
    t in table[:-1]; on an ascending table that count of entries >= s is
    what `searchsorted(table[:-1], s, "left")` leaves out, so the index is
    simply the searchsorted position. NaN scales sort last, to the top index,
    as in compressai (NaN <= t is false for every t).
    """
    table = np.asarray(scale_table, dtype=np.float32).reshape(-1)
    if table.size == 0 or not np.all(np.diff(table) >= 0):
        raise BadInputError("scale table must be non-empty and ascending")
    bounded = np.maximum(np.asarray(scales, dtype=np.float32), np.float32(scale_bound))
    return np.searchsorted(table[:-1], bounded, side="left").astype(np.int32)


def coded_scales(scales, gain: float = 1.0) -> np.ndarray:
    """The scales a slice's symbols are coded with at gain a: float32(sigma * a)."""
    scales = np.asarray(scales, dtype=np.float32)
    return scales if gain == 1.0 else scales * np.float32(gain)


def quantize_symbols(y, means, gain: float = 1.0) -> np.ndarray:
    """round((y - means) * gain) as int32 in float32, rounding halves to even
    like torch.round."""
    centred = np.asarray(y, dtype=np.float32) - np.asarray(means, dtype=np.float32)
    if gain != 1.0:
        centred *= np.float32(gain)
    rounded = np.round(centred)
    # One pass over the data; NaN fails the comparison too.
    if not np.all(np.abs(rounded) < _MAX_ABS_SYMBOL):
        raise BadInputError("latent holds a non-finite or out-of-range value")
    return rounded.astype(np.int32)


def dequantize(symbols, means, gain: float = 1.0) -> np.ndarray:
    """symbols / gain + means in float32."""
    values = np.asarray(symbols).astype(np.float32)
    if gain != 1.0:
        values /= np.float32(gain)
    return values + np.asarray(means, dtype=np.float32)


def _channel_indexes(n_channels: int, plane_size: int) -> np.ndarray:
    """EntropyBottleneck's indexes: every value of channel c uses table c,
    flattened in C, H, W order."""
    return np.repeat(np.arange(n_channels, dtype=np.int32), plane_size)


def _channel_medians(medians, n_tables: int) -> np.ndarray:
    medians = np.asarray(medians, dtype=np.float32).reshape(-1)
    if medians.shape[0] != n_tables:
        raise BadInputError(f"{medians.shape[0]} medians for {n_tables} channel tables")
    return medians[None, :, None, None]


def compress_z(z, medians, cdfs, cdf_lengths, offsets) -> bytes:
    """Code the hyper-latent z (1, C, h, w) like `EntropyBottleneck.compress(z)[0]`.

    `medians` is the bottleneck's `quantiles[:, 0, 1]` (C values); the tables
    are its `_quantized_cdf`, `_cdf_length` and `_offset`, one per channel.
    """
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 4 or z.shape[0] != 1:
        raise BadInputError(f"z must have shape (1, C, h, w), got {z.shape}")
    n_channels, height, width = z.shape[1:]
    symbols = quantize_symbols(z, _channel_medians(medians, n_channels)).reshape(-1)
    indexes = _channel_indexes(n_channels, height * width)
    return encode_with_indexes(symbols, indexes, cdfs, cdf_lengths, offsets)


def decompress_z(data: bytes, shape_hw, medians, cdfs, cdf_lengths, offsets) -> np.ndarray:
    """Decode z_hat (1, C, h, w) float32 like `EntropyBottleneck.decompress([data], shape_hw)`,
    with C the number of medians. Raises `DesyncError` if the stream does not
    end exactly where its encoder started (wrong tables or shape)."""
    height, width = (int(side) for side in shape_hw)
    if height <= 0 or width <= 0:
        raise BadInputError(f"invalid z size {height}x{width}")
    means = _channel_medians(medians, np.asarray(medians).size)
    n_channels = means.shape[1]
    decoder = RansStreamDecoder(data)
    indexes = _channel_indexes(n_channels, height * width)
    symbols = decoder.decode(indexes, cdfs, cdf_lengths, offsets)
    decoder.finish()
    return dequantize(symbols.reshape(1, n_channels, height, width), means)
