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

A file with margin delta is for setups whose |ln s - ln s_float64| stays
under delta / 2: any two of them differ by less than delta. How far a setup's
scales stray depends on the backend AND on the model (an error about constant
in s, large in ln at small scales, with some weights), so the margin encoders
write by default is the model's: the reference computes it from its own
float32 and float64 scales (`dcae.margin.model_margin`), and the exporter
records it in the bundle's manifest. `DEFAULT_MARGIN` is its floor (the
embedded model's), and the default for bundles that record none. Each backend also declares `sigma_error_bound`, the error its fp32
arithmetic gives on the embedded model: a floor (no model does better), so a
decoder refuses files whose margin is under twice it, and states no bound
(reads no portable file) where it was never measured. The decoder checks, for
every element, that its own scales agree with the side stream within delta / 2
(`apply_side_stream`): a damaged side stream or a setup outside the margin is
an error, not noise. The rANS end-of-stream check stays as the backstop.

Threshold shifts: most of the listed elements are avoidable. The encoder
moves every critical value of a BLOCK of elements (B consecutive offsets of
the flattened latent) by o = step(k) * 2 delta (ln), for a choice k in
0..K-1 (K up to 16) that it picks per block and writes in the side stream,
with step(k) = 0, +1, -1, +2, -2, ..., -7, +8 for k = 0..15 (the smallest
|shift| first, so that a K reaches no farther than it must).
An element whose ln s lies between ln c and ln c + o then takes the index on
the other side of c. The K windows of width 2 delta around the shifted values
do not overlap, so a block with an element near a boundary under k = 0
usually has none under another k; the encoder picks the k with the fewest,
and the block length and K with the smallest side stream. The shifts give
some elements the neighbouring coding table, which changes the y stream's
size, by about the largest |o|: see benchmarks/results/sigma_agreement_amd.md
and sigma_agreement_golden_amd.md for the embedded model and the official
configuration (golden weights).

Side stream bytes (never empty: a portable file always carries one):

    byte 0      log2 K (0..4)
    if K > 1:   uint32 LE block length B (1 .. number of y elements), uint32
                LE block count m (= ceil(elements / B)), then the m choices,
                log2 K bits each, most significant bit first, zero padding
                to the byte
    then        the marked list, nothing when no element is marked:
    byte 0      Rice parameter k (0..30)
    bytes 1..4  uint32 LE count n (1..number of y elements)
    bits        per marked element, positions increasing (offsets in the y
                latent flattened C, H, W, slices in order): the gap
                g = position - previous - 1 (previous = -1 at first) as
                g >> k one-bits and a zero-bit, then the k low bits of g,
                then the side bit; most significant bit of a byte first;
                zero padding to the byte; nothing after it.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

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
# sigma_agreement_amd.md, from `python -m dcae_deploy.bench.sigma_agreement`). Each
# setup's own error against float64 is at most 7.9e-6 on either CPU, so
# delta / 2 covers every setup 2.6x and any two, on the same machine or not,
# 1.3x. It lists about 6.4e-4 of the y elements (0.86 % of a Kodak file).
# It is the floor of every model's margin (`dcae.margin.model_margin`): the
# official configuration with the golden weights differs by up to 3.1e-4
# between setups and gets 1.1e-3 (docs/portable.md).
DEFAULT_MARGIN = 4.1e-5
# Stands for "the model's margin" (`dcae.margin.model_margin` in the
# reference; a bundle's manifest in the runtime, `DEFAULT_MARGIN` where it
# records none) wherever a margin is passed.
MODEL_MARGIN = "model"
MAX_RICE_PARAMETER = 30
# Threshold shifts: at most 16 choices per block (4 bits). On Kodak they take
# the side stream of the embedded model at the default margin to 0.24 % of
# the file (0.27 % with at most 8 shifts, all upward), and of the official
# configuration (golden weights) at its margin to 0.27 % (0.41 %)
# (benchmarks/results/sigma_agreement_amd.md, sigma_agreement_golden_amd.md).
MAX_SHIFTS = 16
_COUNT = struct.Struct("<I")
LIST_HEADER_SIZE = 1 + _COUNT.size  # the marked list's: Rice parameter, count

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

    def nearest(self, scales: np.ndarray, offsets=0.0) -> tuple[np.ndarray, np.ndarray]:
        """(which critical value is nearest in ln, |ln s - ln c - offset|) per
        scale, for critical values moved up by `offsets` (ln: a scalar or one
        per scale); the distance is +inf for a scale that is not finite and
        positive."""
        log_s = _log_scales(scales) - offsets
        valid = np.isfinite(log_s)
        log_s = np.where(valid, log_s, 0.0)
        upper = np.clip(np.searchsorted(self.log_critical, log_s), 1, max(1, self.log_critical.size - 1))
        lower = upper - 1
        if self.log_critical.size == 1:
            upper = lower = np.zeros_like(upper)
        d_lower = np.abs(log_s - self.log_critical[lower])
        d_upper = np.abs(log_s - self.log_critical[upper])
        nearest = np.where(d_upper < d_lower, upper, lower)
        distance = np.where(valid, np.minimum(d_lower, d_upper), np.inf)
        return nearest, distance

    def largest_shift_count(self, margin: float) -> int:
        """The largest K (a power of two, at most `MAX_SHIFTS`) whose largest
        shift, max |step(k)| * 2 margin for k < K, stays under half the
        smallest spacing of the critical values (ln), so that a shifted value
        never comes near the next one."""
        spacing = float(np.min(np.diff(self.log_critical))) if self.log_critical.size > 1 else np.inf
        count = MAX_SHIFTS
        while count > 1 and largest_step(count) * 2 * margin >= spacing / 2:
            count //= 2
        return count

    def shift_indexes(self, scales: np.ndarray, indexes: np.ndarray, offsets) -> None:
        """Move the critical values by `offsets` (ln, under half the table's
        spacing in size), in place: an element whose ln s lies in
        (ln c, ln c + offset] of the critical value c just under it takes the
        index below c; one in (ln c + offset, ln c] of the critical value c
        at or above it (a negative offset) takes the index above c. Elements
        near the shifted end of either window are listed by the encoder, and
        at the other end the index is the same on both sides, so how this
        rounds there does not matter."""
        log_s = _log_scales(scales)
        valid = np.isfinite(log_s)
        offsets = np.broadcast_to(np.asarray(offsets, dtype=np.float64), log_s.shape)
        above = np.searchsorted(self.log_critical, np.where(valid, log_s, -np.inf), side="left")
        flat = indexes.reshape(-1)
        below = np.maximum(above - 1, 0)
        down = valid & (offsets > 0) & (above >= 1) & (log_s - self.log_critical[below] <= offsets)
        flat[down] = self.below[below[down]]
        at = np.minimum(above, self.log_critical.size - 1)
        up = valid & (offsets < 0) & (above < self.log_critical.size) & (self.log_critical[at] - log_s < -offsets)
        flat[up] = self.above[at[up]]


def _log_scales(scales) -> np.ndarray:
    """ln of each scale as float64, flattened; NaN where it is not finite and positive."""
    s = np.asarray(scales, dtype=np.float64).reshape(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isfinite(s) & (s > 0), np.log(np.where(s > 0, s, 1.0)), np.nan)


def mark(scales: np.ndarray, indexes: np.ndarray, thresholds: Thresholds, margin: float, offsets=0.0):
    """The elements an encoder lists: (offsets in the flattened `scales`, side bits)."""
    nearest, distance = thresholds.nearest(scales, offsets)
    positions = np.flatnonzero(distance <= margin)
    used = np.asarray(indexes).reshape(-1)[positions]
    k = nearest[positions]
    above = used == thresholds.above[k]
    if not np.all(above | (used == thresholds.below[k])):
        # The indexes were not computed from these scales: a bug, not bad data.
        raise ValueError("an index of a marked element is on neither side of its critical value")
    return positions.astype(np.int64), above.astype(np.uint8)


def apply_side_stream(scales: np.ndarray, indexes: np.ndarray, positions: np.ndarray, bits: np.ndarray,
                      thresholds: Thresholds, margin: float, offsets=0.0) -> None:
    """Give the listed elements the encoder's index, in place, and check every
    element against the margin (`positions` are offsets in the flattened
    `scales`; `offsets` the ln shift of each element's critical values)."""
    flat = indexes.reshape(-1)
    nearest, distance = thresholds.nearest(scales, offsets)
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


# ---- the marked list's bytes --------------------------------------------------------------

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


def _encode_marked_list(positions: np.ndarray, bits: np.ndarray, total: int) -> bytes:
    """The marked list of `positions` (increasing, < total) and their side bits; empty when none."""
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


def _decode_marked_list(data: bytes, total: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, side bits) of a marked list for a y latent of `total`
    elements; every way it can be malformed raises `CorruptStreamError` with
    a one-line reason."""
    if not data:
        return np.zeros(0, np.int64), np.zeros(0, np.uint8)
    if len(data) < LIST_HEADER_SIZE:
        raise CorruptStreamError(f"side stream's marked list of {len(data)} bytes is shorter than its "
                                 f"{LIST_HEADER_SIZE}-byte head")
    k = data[0]
    (n,) = _COUNT.unpack_from(data, 1)
    if k > MAX_RICE_PARAMETER:
        raise CorruptStreamError(f"side stream Rice parameter {k} is over {MAX_RICE_PARAMETER}")
    if n == 0 or n > total:
        raise CorruptStreamError(f"side stream lists {n} elements of a latent of {total}")
    # Each entry takes at least k + 2 bits: a count the bytes cannot hold is
    # refused before anything of its size is allocated.
    if n * (k + 2) > (len(data) - LIST_HEADER_SIZE) * 8:
        raise CorruptStreamError(f"side stream's marked list of {len(data)} bytes cannot hold {n} entries")
    buffer = np.frombuffer(data, np.uint8)
    positions = np.empty(n, np.int64)
    bits = np.empty(n, np.uint8)
    status, end = _rice_decode(buffer, LIST_HEADER_SIZE, n, k, total, positions, bits)
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
    return positions, bits


# ---- threshold shifts ------------------------------------------------------------------------

# step(k) of choice k, in units of 2 margin: 0, +1, -1, +2, -2, ..., -7, +8.
SHIFT_STEPS = np.array([(k + 1) // 2 if k % 2 else -(k // 2) for k in range(MAX_SHIFTS)], dtype=np.float64)
SHIFT_COUNTS = (1, 2, 4, 8, MAX_SHIFTS)  # the Ks a side stream may carry


def largest_step(count: int) -> float:
    """max |step(k)| for k < count."""
    return float(np.max(np.abs(SHIFT_STEPS[:count])))


_SHIFT_HEAD = struct.Struct("<II")  # block length, block count
# Bounds the positions of a side stream read without the model (its latent's
# size unknown), as `dcae inspect` reads it.
_LARGEST_LATENT = 2**31 - 1
# Block lengths an encoder tries, as multiples of a channel's plane (H * W):
# a channel, and groups of channels or parts of one. On Kodak the embedded
# model's files take 1 or 2 planes at the default margin, the official
# configuration's (golden weights) 1/8 at theirs
# (benchmarks/results/sigma_agreement_amd.md, sigma_agreement_golden_amd.md).
BLOCK_PLANES = (1 / 8, 1 / 4, 1 / 2, 1, 2, 4)


@dataclass(frozen=True)
class ThresholdShifts:
    """Per block of `block` consecutive elements, the choice k (0..count-1)
    of its critical values' shift, step(k) * 2 margin (ln)."""

    count: int  # K, a power of two; 1: no shifts
    block: int = 0
    choices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))

    def offsets(self, start: int, stop: int, margin: float):
        """The ln shift of the elements at offsets start..stop-1 (0.0 without shifts)."""
        if self.count == 1:
            return 0.0
        steps = SHIFT_STEPS[self.choices[np.arange(start, stop, dtype=np.int64) // self.block]]
        return steps * (2.0 * margin)


NO_SHIFTS = ThresholdShifts(1)


@dataclass(frozen=True)
class SideStream:
    positions: np.ndarray  # int64, increasing offsets in the flattened y latent
    bits: np.ndarray  # uint8, 1: the index above the critical value
    shifts: ThresholdShifts = NO_SHIFTS


def _choice_bits(count: int) -> int:
    return count.bit_length() - 1


def _choices_size(shifts: ThresholdShifts) -> int:
    if shifts.count == 1:
        return 1
    return 1 + _SHIFT_HEAD.size + (shifts.choices.size * _choice_bits(shifts.count) + 7) // 8


def _marked_list_size(positions: np.ndarray) -> int:
    if positions.size == 0:
        return 0
    gaps = np.diff(positions, prepend=-1) - 1
    bits = min(_rice_size_bits(gaps, k) for k in range(MAX_RICE_PARAMETER + 1))
    return LIST_HEADER_SIZE + (bits + 7) // 8


def encode_side_stream(shifts: ThresholdShifts, positions: np.ndarray, bits: np.ndarray, total: int) -> bytes:
    """The side stream of a y latent of `total` elements: the shifts, then the
    marked `positions` (increasing) and their side bits."""
    width = _choice_bits(shifts.count)
    if shifts.count not in SHIFT_COUNTS:
        raise ValueError(f"no shift count {shifts.count} (a side stream carries one of {SHIFT_COUNTS})")
    head = bytes([width])
    if shifts.count > 1:
        blocks = -(-total // shifts.block)
        if shifts.choices.size != blocks or np.any(shifts.choices >= shifts.count):
            raise ValueError("one choice under the shift count per block is needed")
        choice_bits = ((shifts.choices[:, None] >> np.arange(width - 1, -1, -1)) & 1).astype(np.uint8)
        head += _SHIFT_HEAD.pack(shifts.block, blocks) + np.packbits(choice_bits.reshape(-1)).tobytes()
    return head + _encode_marked_list(positions, bits, total)


def decode_side_stream(data: bytes, total: int | None) -> SideStream:
    """Parse a side stream for a y latent of `total` elements (None: not
    known, as for `dcae inspect`); every way it can be malformed raises
    `CorruptStreamError` with a one-line reason."""
    if not data:
        raise CorruptStreamError("side stream is empty (it starts with the shift count)")
    width = data[0]
    if width > _choice_bits(MAX_SHIFTS):
        raise CorruptStreamError(f"side stream shift count 2**{width} is over {MAX_SHIFTS}")
    shifts, start = NO_SHIFTS, 1
    if width:
        if len(data) < 1 + _SHIFT_HEAD.size:
            raise CorruptStreamError(f"side stream of {len(data)} bytes is shorter than its shift head")
        block, blocks = _SHIFT_HEAD.unpack_from(data, 1)
        if block == 0 or blocks == 0:
            raise CorruptStreamError(f"side stream has {blocks} shift blocks of {block} elements")
        if total is not None and blocks != -(-total // block):
            raise CorruptStreamError(f"side stream has {blocks} shift blocks of {block} elements for a latent "
                                     f"of {total}")
        start = 1 + _SHIFT_HEAD.size
        size = (blocks * width + 7) // 8
        # Checked before anything of the count's size is allocated.
        if len(data) < start + size:
            raise CorruptStreamError(f"side stream of {len(data)} bytes cannot hold {blocks} shift choices")
        packed = np.unpackbits(np.frombuffer(data, np.uint8, size, start))
        if np.any(packed[blocks * width:]):
            raise CorruptStreamError("side stream shift choices' padding bits are not zero")
        choices = packed[: blocks * width].reshape(blocks, width) @ (1 << np.arange(width - 1, -1, -1))
        shifts = ThresholdShifts(1 << width, block, choices.astype(np.uint8))
        start += size
        if total is None:
            total = block * blocks
    positions, bits = _decode_marked_list(data[start:], _LARGEST_LATENT if total is None else total)
    return SideStream(positions, bits, shifts)


def _block_lengths(total: int, plane: int) -> list[int]:
    lengths = []
    for planes in BLOCK_PLANES:
        length = int(plane * planes)
        if length == plane * planes and 1 <= length <= total and length not in lengths:
            lengths.append(length)
    return lengths


@dataclass(frozen=True)
class PortableEncoding:
    indexes: np.ndarray  # the indexes to code the y symbols with (shifts applied)
    side: bytes  # the side stream
    listed: int  # elements in the marked list
    shifts: ThresholdShifts


# Elements of the latent processed at a time by the whole-latent passes here
# (every one element-wise): their float64 temporaries stay a few MB each
# instead of 8 bytes per element of the latent, times ten.
CHUNK_ELEMENTS = 1 << 20


def _chunks(total: int):
    for start in range(0, total, CHUNK_ELEMENTS):
        yield start, min(start + CHUNK_ELEMENTS, total)


def encode_portable(scales: np.ndarray, indexes: np.ndarray, thresholds: Thresholds, margin: float,
                    copy: bool = True) -> PortableEncoding:
    """The encoder's side of a portable file: of the (1, C, H, W) `scales` and
    their unshifted `indexes`, the threshold shifts (block length, K and
    choices) that give the smallest side stream, the indexes they give, and
    the side stream. `copy=False` shifts `indexes` (a C-contiguous int32
    array) in place and returns it, rather than a shifted copy."""
    scales = np.asarray(scales)
    flat_scales = scales.reshape(-1)
    total, plane = scales.size, int(np.prod(scales.shape[2:])) if scales.ndim == 4 else scales.size
    shift_count = thresholds.largest_shift_count(margin)
    # An element farther than the largest shift plus the margin from every
    # unshifted critical value is near no shifted one (the slack is far above
    # float64 rounding): only the others are tested per shift.
    reach = largest_step(shift_count) * 2.0 * margin + margin + 1e-9
    candidates = np.concatenate([start + np.flatnonzero(thresholds.nearest(flat_scales[start:stop])[1] <= reach)
                                 for start, stop in _chunks(total)] or [np.zeros(0, np.int64)])
    candidate_scales = flat_scales[candidates]
    # near[k]: the positions within margin of a critical value shifted by step(k) * 2 margin, increasing
    near = [candidates[thresholds.nearest(candidate_scales, SHIFT_STEPS[k] * 2.0 * margin)[1] <= margin]
            for k in range(shift_count)]
    best = (_choices_size(NO_SHIFTS) + _marked_list_size(near[0]), NO_SHIFTS)
    for block in _block_lengths(total, plane) if shift_count > 1 else []:
        blocks = -(-total // block)
        counts = np.stack([np.bincount(positions // block, minlength=blocks) for positions in near])
        for count in SHIFT_COUNTS[1:]:
            if count > shift_count:
                break
            choices = np.argmin(counts[:count], axis=0).astype(np.uint8)  # the first of equal counts
            chosen = np.sort(np.concatenate([positions[choices[positions // block] == k]
                                             for k, positions in enumerate(near[:count])]))
            shifts = ThresholdShifts(count, block, choices)
            size = _choices_size(shifts) + _marked_list_size(chosen)
            if size < best[0]:
                best = (size, shifts)
    shifts = best[1]
    if copy:
        shifted = np.array(indexes, dtype=np.int32, copy=True)
    else:
        shifted = indexes
        if not (isinstance(shifted, np.ndarray) and shifted.dtype == np.int32 and shifted.flags.c_contiguous
                and shifted.flags.writeable):
            raise ValueError("indexes shifted in place must be a writable C-contiguous int32 array")
    flat_indexes = shifted.reshape(-1)  # a view: shifted in place
    marked = []
    for start, stop in _chunks(total):
        offsets = shifts.offsets(start, stop, margin)
        chunk_scales, chunk_indexes = flat_scales[start:stop], flat_indexes[start:stop]
        if shifts.count > 1:
            thresholds.shift_indexes(chunk_scales, chunk_indexes, offsets)
        positions, bits = mark(chunk_scales, chunk_indexes, thresholds, margin, offsets)
        marked.append((positions + start, bits))
    positions = np.concatenate([m[0] for m in marked]) if marked else np.zeros(0, np.int64)
    bits = np.concatenate([m[1] for m in marked]) if marked else np.zeros(0, np.uint8)
    side = encode_side_stream(shifts, positions, bits, total)
    assert len(side) == best[0]
    return PortableEncoding(shifted, side, int(positions.size), shifts)


class PortableDecoding:
    """The decoder's side: gives each slice's indexes the file's shifts and
    listed sides, and checks its scales against the margin."""

    def __init__(self, side: bytes, total: int, thresholds: Thresholds, margin: float):
        self.thresholds, self.margin = thresholds, margin
        self.side = decode_side_stream(side, total)
        count = self.side.shifts.count
        if count > thresholds.largest_shift_count(margin):
            raise CorruptStreamError(f"side stream has {count} threshold shifts: more than the margin {margin:g} "
                                     f"allows with this scale table")

    def apply(self, start: int, scales: np.ndarray, indexes: np.ndarray) -> None:
        """In place: the indexes of the elements at offsets start.. of the
        latent, computed by `build_indexes` from this decoder's `scales`
        (a C-contiguous int32 array), a chunk of elements at a time."""
        scales = np.asarray(scales)
        if scales.size <= CHUNK_ELEMENTS or not (isinstance(indexes, np.ndarray) and indexes.flags.c_contiguous):
            self._apply(start, scales, indexes)
            return
        flat_scales, flat_indexes = scales.reshape(-1), indexes.reshape(-1)  # (a view of the contiguous indexes)
        for lo, hi in _chunks(flat_scales.size):
            self._apply(start + lo, flat_scales[lo:hi], flat_indexes[lo:hi])

    def _apply(self, start: int, scales: np.ndarray, indexes: np.ndarray) -> None:
        stop = start + scales.size
        offsets = self.side.shifts.offsets(start, stop, self.margin)
        if self.side.shifts.count > 1:
            self.thresholds.shift_indexes(scales, indexes, offsets)
        lo, hi = np.searchsorted(self.side.positions, [start, stop])
        apply_side_stream(scales, indexes, self.side.positions[lo:hi] - start, self.side.bits[lo:hi],
                          self.thresholds, self.margin, offsets)
