"""rANS entropy coder, byte-identical to compressai 1.2.8's C++ coder.

compressai (`compressai/cpp_exts/rans/rans_interface.cpp` on top of ryg_rans'
`rans64.h`) codes each symbol with a 64-bit rANS state that is kept in
[RANS64_L, RANS64_L << 32) and spills 32-bit words, using 16-bit quantised
CDFs. A value outside a table's range is coded as the table's last symbol (the
escape) followed by "bypass" chunks of 4 bits: the number of chunks, then the
chunks themselves, low first. The stream is the encoder's output words in
little-endian order, beginning with the final 64-bit state.

The per-symbol loops are numba kernels (one per direction, plus the decoder's
symbol lookup); everything around them is numpy. Nothing here imports torch
or compressai.

Robustness: the decoder runs on untrusted files, so every read is bounds
checked inside the kernel, the escape length is bounded, and all failures come
back as status codes that the Python side turns into `CorruptStreamError`.
"""
from __future__ import annotations

import numba
import numpy as np

from dcae_deploy.runtime.errors import BadInputError, CorruptStreamError, DcaeError, DesyncError

PRECISION = 16  # bits of the quantised CDFs: every table ends at 1 << 16
RANS64_L = 1 << 31  # lower bound of the normalised state, also the initial state
BYPASS_BITS = 4
# compressai's encoder finds the chunk count with `raw >> (4 * n)` on a uint32,
# which never reaches zero once raw >= 2**28 (a shift by 32 is undefined, on
# x86 it shifts by 0) and hangs. So valid streams have at most 7 raw chunks,
# their count fits in one chunk (no run of 15s) and raw values stay < 2**28.
MAX_BYPASS_CHUNKS = 7
MAX_RAW_VALUE = 1 << (BYPASS_BITS * MAX_BYPASS_CHUNKS)

# Kernel status codes.
_OK = 0
_ERR_INDEX = 1  # a cdf index outside [0, n_tables)
_ERR_PAST_END = 2  # the decoder needs a word beyond the end of the stream
_ERR_ESCAPE = 3  # the decoder read a bypass chunk count no encoder writes
_ERR_TOO_FAR = 4  # the encoder got a value compressai cannot code
_ERR_NO_ROOM = 5  # the encoder's output buffer is too small (caller retries)

# The kernels do all state arithmetic in uint64 (wrapping like the C code);
# typed constants keep numba from promoting mixed int64/uint64 to float.
_U_L = np.uint64(RANS64_L)
_U_PRECISION = np.uint64(PRECISION)
_U_PROB_MASK = np.uint64((1 << PRECISION) - 1)
_U_WORD_BITS = np.uint64(32)
_U_WORD_MASK = np.uint64(0xFFFFFFFF)
_U_BYPASS_BITS = np.uint64(BYPASS_BITS)
_U_BYPASS_MASK = np.uint64((1 << BYPASS_BITS) - 1)
_BYPASS_MASK = (1 << BYPASS_BITS) - 1
# The decoder finds a symbol from a per-table lookup by the top 10 bits of its
# cumulative frequency (1024 buckets): built in well under a millisecond for
# DCAE's 64 tables, small enough to stay in cache, and it leaves a short scan.
_BUCKET_SHIFT = 6
# Rans64EncPut spills a word when x >= ((L >> scale_bits) << 32) * freq.
_U_SPILL_PER_FREQ = np.uint64((RANS64_L >> PRECISION) << 32)
# Rans64EncPutBits codes a 4-bit chunk as a symbol of frequency 1 << (16 - 4).
_U_BYPASS_SPILL = np.uint64(((RANS64_L >> PRECISION) << 32) << (PRECISION - BYPASS_BITS))


# ----------------------------------------------------------------------------
# numba kernels
# ----------------------------------------------------------------------------

@numba.njit(cache=True, nogil=True)
def _spill(words, pos, x, limit):
    """Encoder renormalisation: before pushing a symbol whose spill limit is
    `limit`, move the low 32 bits of a state at or above it to the output
    (written backwards). Returns the new (pos, x)."""
    if x >= limit:
        pos -= 1
        words[pos] = np.uint32(x & _U_WORD_MASK)
        x >>= _U_WORD_BITS
    return pos, x


@numba.njit(cache=True, nogil=True)
def _refill(words, pos, x):
    """Decoder renormalisation: a state that fell below RANS64_L takes in the
    next word. Returns the new (pos, x); pos is -1 when no word is left."""
    if x < _U_L:
        if pos >= words.shape[0]:
            return -1, x
        x = (x << _U_WORD_BITS) | np.uint64(words[pos])
        pos += 1
    return pos, x


@numba.njit(cache=True, nogil=True)
def _encode_kernel(symbols, indexes, cdfs, cdf_lengths, offsets, words):
    """Code `symbols` into the tail of `words`, last symbol first (rANS is a
    stack: the decoder pops first what the encoder pushed last).

    Returns (status, where): on success `where` is the position of the first
    stream word in `words`; on failure it is the offending symbol's position.
    """
    n_tables = cdf_lengths.shape[0]
    pos = words.shape[0]
    x = _U_L
    for i in range(symbols.shape[0] - 1, -1, -1):
        table = indexes[i]
        if table < 0 or table >= n_tables:
            return _ERR_INDEX, i
        max_value = np.int64(cdf_lengths[table]) - 2
        value = np.int64(symbols[i]) - np.int64(offsets[table])
        escaped = value < 0 or value >= max_value
        n_chunks = 0
        if escaped:
            # Fold the value to a non-negative `raw`: odd below the table,
            # even from its top (max_value itself is raw 0).
            raw = -2 * value - 1 if value < 0 else 2 * (value - max_value)
            if raw >= MAX_RAW_VALUE:
                return _ERR_TOO_FAR, i
            while (raw >> (BYPASS_BITS * n_chunks)) != 0:
                n_chunks += 1
            value = max_value
        # Each push spills at most one word; keep two for the final state.
        if pos < (n_chunks + 2) + 2:
            return _ERR_NO_ROOM, i

        if escaped:
            # Pushed in reverse of the decoding order: raw chunks high to low,
            # then their count; the escape symbol itself goes last (below).
            for j in range(n_chunks, -1, -1):
                if j == 0:
                    chunk = np.uint64(n_chunks)
                else:
                    chunk = np.uint64((raw >> (BYPASS_BITS * (j - 1))) & _BYPASS_MASK)
                pos, x = _spill(words, pos, x, _U_BYPASS_SPILL)
                x = (x << _U_BYPASS_BITS) | chunk

        start = np.uint64(cdfs[table, value])
        freq = np.uint64(cdfs[table, value + 1]) - start
        pos, x = _spill(words, pos, x, _U_SPILL_PER_FREQ * freq)
        x = ((x // freq) << _U_PRECISION) + (x % freq) + start

    # Rans64EncFlush: the final state, low word first.
    pos -= 2
    words[pos] = np.uint32(x & _U_WORD_MASK)
    words[pos + 1] = np.uint32(x >> _U_WORD_BITS)
    return _OK, pos


@numba.njit(cache=True, nogil=True)
def _bucket_symbols(cdfs, cdf_lengths):
    """For each table and each bucket of 2**_BUCKET_SHIFT cumulative
    frequencies, the symbol whose range holds the bucket's first value
    (the tables must be checked: rising strictly up to 1 << 16)."""
    n_buckets = 1 << (PRECISION - _BUCKET_SHIFT)
    first_symbol = np.empty((cdf_lengths.shape[0], n_buckets), dtype=np.int32)
    for table in range(cdf_lengths.shape[0]):
        symbol = 0
        for bucket in range(n_buckets):
            while cdfs[table, symbol + 1] <= bucket << _BUCKET_SHIFT:
                symbol += 1
            first_symbol[table, bucket] = symbol
    return first_symbol


@numba.njit(cache=True, nogil=True)
def _decode_kernel(words, pos, x, indexes, cdfs, cdf_lengths, offsets, out):
    """Decode len(indexes) symbols into `out`, continuing from state `x` at
    word `pos`. Returns (status, symbol position reached, pos, x)."""
    n_tables = cdf_lengths.shape[0]
    first_symbol = _bucket_symbols(cdfs, cdf_lengths)
    for i in range(indexes.shape[0]):
        table = indexes[i]
        if table < 0 or table >= n_tables:
            return _ERR_INDEX, i, pos, x
        max_value = cdf_lengths[table] - 2

        # The symbol s with cdf[s] <= cum < cdf[s + 1] (compressai scans the
        # table from 0): start at the symbol of cum's bucket and step forward.
        # The checked tables end at 1 << 16 > cum, so the scan stays in its row.
        cum = np.int64(x & _U_PROB_MASK)
        lo = np.int64(first_symbol[table, cum >> _BUCKET_SHIFT])
        while cdfs[table, lo + 1] <= cum:
            lo += 1
        start = np.uint64(cdfs[table, lo])
        freq = np.uint64(cdfs[table, lo + 1]) - start
        x = freq * (x >> _U_PRECISION) + np.uint64(cum) - start
        pos, x = _refill(words, pos, x)
        if pos < 0:
            return _ERR_PAST_END, i, pos, x

        value = np.int64(lo)
        if lo == max_value:
            # Bypass chunks: their count, then the raw value, low chunk first.
            n_chunks = np.int64(x & _U_BYPASS_MASK)
            x >>= _U_BYPASS_BITS
            pos, x = _refill(words, pos, x)
            if pos < 0:
                return _ERR_PAST_END, i, pos, x
            if n_chunks > MAX_BYPASS_CHUNKS:
                return _ERR_ESCAPE, i, pos, x
            raw = np.int64(0)
            for j in range(n_chunks):
                raw |= np.int64(x & _U_BYPASS_MASK) << (BYPASS_BITS * j)
                x >>= _U_BYPASS_BITS
                pos, x = _refill(words, pos, x)
                if pos < 0:
                    return _ERR_PAST_END, i, pos, x
            value = -(raw >> 1) - 1 if raw & 1 else (raw >> 1) + max_value
        out[i] = value + offsets[table]
    return _OK, indexes.shape[0], pos, x


# ----------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------

def _as_int32(name: str, values) -> np.ndarray:
    """A C-contiguous int32 copy or view of an integer array, refusing values
    that int32 cannot hold rather than wrapping them."""
    array = np.ascontiguousarray(values)
    if array.dtype == np.int32:
        return array
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise BadInputError(f"{name} must hold integers, got {array.dtype}")
    if array.size and (array.min() < -2**31 or array.max() >= 2**31):
        raise BadInputError(f"{name} holds values outside int32")
    return array.astype(np.int32)


def _int32_vector(name: str, values) -> np.ndarray:
    array = _as_int32(name, values)
    if array.ndim != 1:
        raise BadInputError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def _checked_tables(cdfs, cdf_lengths, offsets):
    """The tables as contiguous int32 arrays, after checking what the kernels
    rely on: each row starts at 0, rises strictly and ends at 1 << 16 (so every
    frequency is in [1, 65535], as compressai's uint16 RansSymbol needs)."""
    cdfs = _as_int32("cdfs", cdfs)
    cdf_lengths = _int32_vector("cdf_lengths", cdf_lengths)
    offsets = _int32_vector("offsets", offsets)
    if cdfs.ndim != 2:
        raise BadInputError(f"cdfs must be 2-D, got shape {cdfs.shape}")
    n_tables, max_length = cdfs.shape
    if n_tables == 0 or cdf_lengths.shape[0] != n_tables or offsets.shape[0] != n_tables:
        raise BadInputError(
            f"entropy tables disagree: {n_tables} cdfs, {cdf_lengths.shape[0]} lengths, "
            f"{offsets.shape[0]} offsets")
    if cdf_lengths.min() < 3 or cdf_lengths.max() > max_length:
        raise BadInputError(f"cdf lengths must be in [3, {max_length}]")
    rows = np.arange(n_tables)
    in_table = np.arange(1, max_length)[None, :] < cdf_lengths[:, None]
    rising = np.diff(cdfs, axis=1) > 0
    if (np.any(cdfs[:, 0] != 0) or np.any(cdfs[rows, cdf_lengths - 1] != 1 << PRECISION)
            or np.any(in_table & ~rising)):
        raise BadInputError(
            f"invalid cdf table: rows must rise strictly from 0 to {1 << PRECISION}")
    return cdfs, cdf_lengths, offsets


def _check_indexes(indexes: np.ndarray, n_tables: int) -> None:
    """Reject out-of-range indexes before coding anything. (The kernels check
    each index too, but only when they reach it: a decoder would first run
    out of sync and report a corrupt stream instead.)"""
    if indexes.size == 0:
        return
    low, high = int(indexes.min()), int(indexes.max())
    if low < 0 or high >= n_tables:
        bad = low if low < 0 else high
        where = int(np.argmax(indexes == bad))
        raise BadInputError(
            f"cdf index {bad} at symbol {where} is outside the {n_tables} tables")


# ----------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------

def encode_with_indexes(symbols, indexes, cdfs, cdf_lengths, offsets) -> bytes:
    """Entropy-code `symbols[i]` with table `indexes[i]`.

    The bytes equal compressai's `RansEncoder().encode_with_indexes(...)` (and
    `BufferedRansEncoder` + `flush()`) for the same lists.
    """
    symbols = _int32_vector("symbols", symbols)
    indexes = _int32_vector("indexes", indexes)
    if symbols.shape != indexes.shape:
        raise BadInputError(
            f"{symbols.shape[0]} symbols but {indexes.shape[0]} indexes")
    cdfs, cdf_lengths, offsets = _checked_tables(cdfs, cdf_lengths, offsets)
    _check_indexes(indexes, cdf_lengths.shape[0])

    n = symbols.shape[0]
    # A symbol costs at most 16 bits, plus 32 for an escape's chunks. Try a
    # buffer for the common case first, then one that always suffices.
    for n_words in (n // 2 + 16, 2 * n + 16):
        words = np.empty(n_words, dtype=np.uint32)
        status, where = _encode_kernel(symbols, indexes, cdfs, cdf_lengths, offsets, words)
        if status != _ERR_NO_ROOM:
            break
    if status == _ERR_TOO_FAR:
        raise BadInputError(
            f"symbol {symbols[where]} at {where} is too far outside its table to code")
    if status != _OK:  # pragma: no cover - indexes were checked, the buffer suffices
        raise DcaeError(f"internal rANS encoder error (status {status})")
    return words[where:].astype("<u4", copy=False).tobytes()


def _stream_words(data) -> np.ndarray:
    """The stream as uint32 words, rejecting lengths no encoder produces.

    The words are a private read-only copy: the caller cannot change them
    mid-decode, and the decode kernel only ever sees one array type (numba
    compiles read-only and writable arrays separately)."""
    data = memoryview(data).tobytes()
    if len(data) < 8 or len(data) % 4:
        raise CorruptStreamError(
            f"rANS stream of {len(data)} bytes: must be a multiple of 4, at least 8")
    return np.frombuffer(data, dtype="<u4").astype(np.uint32, copy=False)


class RansStreamDecoder:
    """Decodes one stream in consecutive parts, like compressai's
    `RansDecoder.set_stream(data)` followed by `decode_stream(...)` calls.

    Call `finish()` after the last part: a stream decoded with the encoder's
    exact indexes and tables ends in the encoder's initial state with every
    word consumed; anything else means the output is noise.
    """

    def __init__(self, data: bytes):
        self._words = _stream_words(data)
        # Rans64DecInit: the state is the first two words, low first.
        self._state = int(self._words[0]) | int(self._words[1]) << 32
        self._pos = 2
        self._failed = False

    def decode(self, indexes, cdfs, cdf_lengths, offsets, out: np.ndarray | None = None) -> np.ndarray:
        """Decode the next len(indexes) symbols, as int32: into `out` (a
        C-contiguous int32 vector of that length, returned) where given."""
        if self._failed:
            raise CorruptStreamError("rANS stream already failed to decode")
        indexes = _int32_vector("indexes", indexes)
        cdfs, cdf_lengths, offsets = _checked_tables(cdfs, cdf_lengths, offsets)
        _check_indexes(indexes, cdf_lengths.shape[0])
        if out is None:
            out = np.empty(indexes.shape[0], dtype=np.int32)
        elif (out.dtype != np.int32 or out.shape != indexes.shape or not out.flags.c_contiguous
              or not out.flags.writeable):
            raise ValueError(f"out must be a writable C-contiguous int32 vector of {indexes.shape[0]} symbols")
        status, reached, pos, state = _decode_kernel(
            self._words, self._pos, np.uint64(self._state), indexes, cdfs, cdf_lengths,
            offsets, out)
        if status != _OK:
            self._failed = True
            if status == _ERR_PAST_END:
                reason = "ends early (truncated, or decoded with other entropy parameters)"
            elif status == _ERR_ESCAPE:
                reason = "has an escape longer than any encoder writes"
            else:  # pragma: no cover - indexes were checked above
                reason = f"failed with status {status}"
            raise CorruptStreamError(
                f"rANS stream {reason}, at symbol {reached} of {indexes.shape[0]}")
        self._pos = int(pos)
        self._state = int(state)
        return out

    def finish(self) -> None:
        """Raise `DesyncError` unless the whole stream was decoded in sync."""
        if self._failed:
            raise CorruptStreamError("rANS stream already failed to decode")
        n_words = self._words.shape[0]
        if self._state != RANS64_L or self._pos != n_words:
            raise DesyncError(
                f"rANS decoder out of sync: state {self._state:#x}, "
                f"{4 * (n_words - self._pos)} bytes left over")


def decode_with_indexes(data: bytes, indexes, cdfs, cdf_lengths, offsets) -> np.ndarray:
    """Decode a whole stream (compressai's `RansDecoder().decode_with_indexes`)
    and check that it ended in sync."""
    decoder = RansStreamDecoder(data)
    values = decoder.decode(indexes, cdfs, cdf_lengths, offsets)
    decoder.finish()
    return values
