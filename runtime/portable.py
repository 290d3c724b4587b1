"""Portable bitstreams: the boundary side stream.

A y symbol decodes only where the decoder picks the encoder's scale-table
index, `index(s) = #{t in table[:-1] : t < max(s, bound)}`, and the decoder's
scale s' is the encoder's s up to float rounding (another backend, another
CPU family). The index changes only at the CRITICAL VALUES (the table entries
at or above the bound), so the encoder, which knows its own s exactly, lists
in a side stream every element whose s lies within a margin delta (natural
log) of a critical value, with one bit for the side of it that it took. A
decoder whose |ln s' - ln s| stays below delta then reproduces every index:
marked elements take the listed side, unmarked ones are at least delta away
from every critical value for the encoder, so rounding cannot carry them
across one.

Side stream bytes (empty when nothing is marked):

    byte 0      Rice parameter k (0..30)
    bytes 1..4  uint32 LE count n (1..number of y elements)
    bits        per marked element, positions increasing (offsets in the y
                latent flattened C, H, W, slices in order): the gap
                g = position - previous - 1 (previous = -1 at first) as
                g >> k one-bits and a zero-bit, then the k low bits of g,
                then the side bit; most significant bit of a byte first;
                zero padding to the byte; nothing after it.

A file with margin delta is for setups whose |ln s - ln s_float64| stays
under delta / 2: any two of them differ by less than delta. How far a setup's
scales stray depends on the backend AND on the model (an error about constant
in s, large in ln at small scales, with some weights), so the margin a bundle's
encoders write by default is measured per model when it is exported
(`exporter.portable_margin`, recorded in the manifest) as four times the
largest difference between the setups that run there; `DEFAULT_MARGIN` is the
one measured for the embedded model, and the default for bundles that record
none. Each backend also declares `sigma_error_bound`, the error its fp32
arithmetic gives on the embedded model: a floor (no model does better), so a
decoder refuses files whose margin is under twice it, and states no bound
(reads no portable file) where it was never measured. The decoder checks, for
every element, that its own scales agree with the side stream within delta / 2
(`apply_side_stream`): a damaged side stream or a setup outside the margin is
an error, not noise. The rANS end-of-stream check stays as the backstop.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numba
import numpy as np

from .errors import BadInputError, CorruptStreamError, DesyncError

# The largest margin a file may carry: 0.01 in ln is 1 % of a scale, far
# below the table's spacing (ln(256 / 0.11) / 63 = 0.123), so the nearest
# critical value of a marked element is never in doubt.
MAX_MARGIN = 0.01
# Default margin, for the embedded model and for bundles that record no
# measured one: 4x the largest |ln s' - ln s| measured between two fp32 setups
# of the embedded model, 1.02e-5 (the reference's AVX2 kernels against
# OpenVINO on an Intel Xeon with AVX-512, weights at 12,500 steps; 8.2e-6 with
# the current weights on an AMD EPYC with AVX2, the reference against
# OpenVINO), over 24 Kodak images (benchmarks/results/sigma_agreement.md,
# sigma_agreement_amd.md, from `python -m benchmarks.sigma_agreement`). Each
# setup's own error against float64 is at most 7.9e-6 on either CPU, so
# delta / 2 covers every setup 2.6x and any two, on the same machine or not,
# 1.3x. It lists about 6.4e-4 of the y elements (0.86 % of a Kodak file).
# Other models measure their own at export: the official configuration with
# the golden weights differs by up to 3.1e-4 between setups (docs/portable.md).
DEFAULT_MARGIN = 4.1e-5
# Stands for "the margin measured for the model" (a bundle's manifest,
# `DEFAULT_MARGIN` where it records none) wherever a margin is passed.
MODEL_MARGIN = "model"
MAX_RICE_PARAMETER = 30
_COUNT = struct.Struct("<I")
SIDE_HEADER_SIZE = 1 + _COUNT.size
# A measured margin is this many times the largest difference measured
# between two setups.
MARGIN_HEADROOM = 4.0

# Decoder kernel status codes.
_OK = 0
_ERR_RUN = 1  # a unary run longer than any gap in this latent
_ERR_END = 2  # the bits ran out before n entries
_ERR_RANGE = 3  # a position at or past the end of the latent


class MarginError(DesyncError):
    """The decoder's scales disagree with the file's side stream by more than
    the file's margin allows: another model, a damaged side stream, or a
    backend outside its stated error bound."""


def margin_covers(margin: float, error_bound: float) -> bool:
    """Whether a file's margin covers two setups that each keep within
    `error_bound` (the encoder's and the decoder's). The margin travels as a
    float32, so a value written as 2 x bound may read back a hair under it."""
    return margin >= 2 * error_bound * (1 - 2**-20)


def check_margin(margin: float) -> float:
    margin = float(margin)
    if not (0.0 < margin <= MAX_MARGIN):  # also refuses NaN
        raise BadInputError(f"portable margin must be in (0, {MAX_MARGIN}], got {margin}")
    return margin


def margin_for(largest_difference: float) -> float:
    """The margin for a model whose setups' scales differ by at most
    `largest_difference` (|ln|, measured): `MARGIN_HEADROOM` times that, never
    under `DEFAULT_MARGIN`, rounded up to two significant digits."""
    wanted = max(DEFAULT_MARGIN, MARGIN_HEADROOM * float(largest_difference))
    if not np.isfinite(wanted) or wanted > MAX_MARGIN:
        raise BadInputError(f"this model's setups differ by up to {largest_difference:.3g} (ln) in their "
                            f"scales: no portable margin up to {MAX_MARGIN} covers that {MARGIN_HEADROOM:g} times")
    digits = 10.0 ** (np.floor(np.log10(wanted)) - 1)
    return min(MAX_MARGIN, float(f"{np.ceil(wanted / digits * (1 - 1e-9)) * digits:.2g}"))


@dataclass(frozen=True)
class Thresholds:
    """The scale table's critical values and the index on either side of each."""

    critical: np.ndarray  # float64, ascending: table entries (of table[:-1]) >= bound
    log_critical: np.ndarray  # their natural logs
    below: np.ndarray  # int32: the index just below each critical value
    above: np.ndarray  # int32: the index at and just above it

    @classmethod
    def from_table(cls, scale_table, scale_bound: float) -> "Thresholds":
        steps = np.asarray(scale_table, dtype=np.float32).reshape(-1)[:-1]
        bound = np.float32(scale_bound)
        critical = np.unique(steps[steps >= bound])
        if critical.size == 0 or critical[0] <= 0:
            raise BadInputError("scale table has no positive entry at or above the bound")
        return cls(
            critical.astype(np.float64),
            np.log(critical.astype(np.float64)),
            np.searchsorted(steps, critical, side="left").astype(np.int32),
            np.searchsorted(steps, critical, side="right").astype(np.int32),
        )

    def nearest(self, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(which critical value is nearest in ln, |ln s - ln c|) per scale; the
        distance is +inf for a scale that is not finite and positive."""
        s = np.asarray(scales, dtype=np.float64).reshape(-1)
        valid = np.isfinite(s) & (s > 0)
        log_s = np.log(np.where(valid, s, 1.0))
        upper = np.clip(np.searchsorted(self.log_critical, log_s), 1, max(1, self.log_critical.size - 1))
        lower = upper - 1
        if self.log_critical.size == 1:
            upper = lower = np.zeros_like(upper)
        d_lower = np.abs(log_s - self.log_critical[lower])
        d_upper = np.abs(log_s - self.log_critical[upper])
        nearest = np.where(d_upper < d_lower, upper, lower)
        distance = np.where(valid, np.minimum(d_lower, d_upper), np.inf)
        return nearest, distance


def mark(scales: np.ndarray, indexes: np.ndarray, thresholds: Thresholds, margin: float):
    """The elements an encoder lists: (offsets in the flattened `scales`, side bits)."""
    nearest, distance = thresholds.nearest(scales)
    positions = np.flatnonzero(distance <= margin)
    used = np.asarray(indexes).reshape(-1)[positions]
    k = nearest[positions]
    above = used == thresholds.above[k]
    if not np.all(above | (used == thresholds.below[k])):
        # The indexes were not computed from these scales: a bug, not bad data.
        raise ValueError("an index of a marked element is on neither side of its critical value")
    return positions.astype(np.int64), above.astype(np.uint8)


def apply_side_stream(scales: np.ndarray, indexes: np.ndarray, positions: np.ndarray, bits: np.ndarray,
                      thresholds: Thresholds, margin: float) -> None:
    """Give the listed elements the encoder's index, in place, and check every
    element against the margin (`positions` are offsets in the flattened
    `scales`)."""
    flat = indexes.reshape(-1)
    nearest, distance = thresholds.nearest(scales)
    marked = np.zeros(distance.shape, bool)
    marked[positions] = True
    # The file is for setups within margin / 2 of float64: a listed element was
    # within `margin` of its critical value for the encoder, so it is within
    # 1.5 margin for this decoder; an unlisted one was farther than `margin`,
    # so it is farther than margin / 2 here.
    tolerance = margin / 2
    if np.any(distance[marked] > margin + tolerance):
        raise MarginError("decoder's scales differ from the encoder's by more than the file's margin "
                          f"({margin:g}) at a listed element: wrong model, damaged file or a setup outside "
                          "the margin")
    if np.any(distance[~marked] < margin - tolerance):
        raise MarginError("decoder's scales lie closer to an index boundary than the encoder allowed for "
                          f"(margin {margin:g}) at an unlisted element: damaged side stream or a setup "
                          "outside the margin")
    k = nearest[positions]
    flat[positions] = np.where(bits.astype(bool), thresholds.above[k], thresholds.below[k])


# ---- the side stream's bytes ----------------------------------------------------------

def _rice_size_bits(gaps: np.ndarray, k: int) -> int:
    return int(np.sum(gaps >> k)) + gaps.size * (k + 2)


@numba.njit(cache=True, nogil=True)
def _rice_encode(gaps, bits, k, out):
    pos = 0
    for i in range(gaps.size):
        g = gaps[i]
        for _ in range(g >> k):
            out[pos >> 3] |= np.uint8(0x80 >> (pos & 7))
            pos += 1
        pos += 1  # the zero that ends the run
        for b in range(k - 1, -1, -1):
            if (g >> b) & 1:
                out[pos >> 3] |= np.uint8(0x80 >> (pos & 7))
            pos += 1
        if bits[i]:
            out[pos >> 3] |= np.uint8(0x80 >> (pos & 7))
        pos += 1
    return pos


@numba.njit(cache=True, nogil=True)
def _rice_decode(data, start, n, k, total, positions, bits):
    """Returns (status, bit position after the last entry)."""
    pos = start * 8
    end = data.size * 8
    max_run = total >> k
    previous = -1
    for i in range(n):
        run = 0
        while True:
            if pos >= end:
                return _ERR_END, pos
            bit = (data[pos >> 3] >> (7 - (pos & 7))) & 1
            pos += 1
            if bit == 0:
                break
            run += 1
            if run > max_run:
                return _ERR_RUN, pos
        if pos + k + 1 > end:
            return _ERR_END, pos
        gap = run << k
        for b in range(k - 1, -1, -1):
            gap |= ((data[pos >> 3] >> (7 - (pos & 7))) & 1) << b
            pos += 1
        bits[i] = (data[pos >> 3] >> (7 - (pos & 7))) & 1
        pos += 1
        position = previous + 1 + gap
        if position >= total:
            return _ERR_RANGE, pos
        positions[i] = position
        previous = position
    return _OK, pos


def encode_side_stream(positions: np.ndarray, bits: np.ndarray, total: int) -> bytes:
    """The side stream of marked `positions` (increasing, < total) and their side bits."""
    positions = np.asarray(positions, dtype=np.int64)
    if positions.size == 0:
        return b""
    if positions[0] < 0 or positions[-1] >= total or np.any(np.diff(positions) <= 0):
        raise ValueError("marked positions must be increasing and inside the latent")
    gaps = np.diff(positions, prepend=-1) - 1
    k = min(range(MAX_RICE_PARAMETER + 1), key=lambda k: _rice_size_bits(gaps, k))
    n_bits = _rice_size_bits(gaps, k)
    out = np.zeros((n_bits + 7) // 8, np.uint8)
    written = _rice_encode(gaps, np.asarray(bits, dtype=np.uint8), k, out)
    assert written == n_bits
    return bytes([k]) + _COUNT.pack(positions.size) + out.tobytes()


@dataclass(frozen=True)
class SideStream:
    positions: np.ndarray  # int64, increasing offsets in the flattened y latent
    bits: np.ndarray  # uint8, 1: the index above the critical value
    rice_parameter: int


def decode_side_stream(data: bytes, total: int) -> SideStream:
    """Parse a side stream for a y latent of `total` elements; every way it can
    be malformed raises `CorruptStreamError` with a one-line reason."""
    if not data:
        return SideStream(np.zeros(0, np.int64), np.zeros(0, np.uint8), 0)
    if len(data) < SIDE_HEADER_SIZE:
        raise CorruptStreamError(f"side stream of {len(data)} bytes is shorter than its {SIDE_HEADER_SIZE}-byte head")
    k = data[0]
    (n,) = _COUNT.unpack_from(data, 1)
    if k > MAX_RICE_PARAMETER:
        raise CorruptStreamError(f"side stream Rice parameter {k} is over {MAX_RICE_PARAMETER}")
    if n == 0 or n > total:
        raise CorruptStreamError(f"side stream lists {n} elements of a latent of {total}")
    # Each entry takes at least k + 2 bits: a count the bytes cannot hold is
    # refused before anything of its size is allocated.
    if n * (k + 2) > (len(data) - SIDE_HEADER_SIZE) * 8:
        raise CorruptStreamError(f"side stream of {len(data)} bytes cannot hold {n} entries")
    buffer = np.frombuffer(data, np.uint8)
    positions = np.empty(n, np.int64)
    bits = np.empty(n, np.uint8)
    status, end = _rice_decode(buffer, SIDE_HEADER_SIZE, n, k, total, positions, bits)
    if status == _ERR_RUN:
        raise CorruptStreamError("side stream has a gap longer than the latent")
    if status == _ERR_END:
        raise CorruptStreamError(f"side stream ends before its {n} entries")
    if status == _ERR_RANGE:
        raise CorruptStreamError(f"side stream lists a position past the latent's {total} elements")
    used_bytes = (end + 7) // 8
    if used_bytes != len(data):
        raise CorruptStreamError(f"side stream has {len(data) - used_bytes} bytes after its entries")
    if end % 8 and buffer[-1] & ((1 << (8 - end % 8)) - 1):
        raise CorruptStreamError("side stream padding bits are not zero")
    return SideStream(positions, bits, k)
