"""Deterministic mutations of a valid file, for fuzzing parsers and decoders.

`mutations(data, count, seed)` yields `count` damaged copies of `data`, the
same ones for the same arguments, so a failure found here reproduces.
"""
from __future__ import annotations

import random
from typing import Callable, Iterator, Sequence

Fields = Sequence[tuple[int, int]]  # (offset, size) of header fields

# Values that tend to hit off-by-one and overflow paths when written into a
# length or size field.
_EXTREME_VALUES = (0, 1, 2, 3, 4, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF,
                   0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)


def _flip_bits(rng: random.Random, data: bytearray, fields: Fields) -> None:
    for _ in range(rng.choice((1, 1, 2, 8))):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)


def _change_bytes(rng: random.Random, data: bytearray, fields: Fields) -> None:
    for _ in range(rng.choice((1, 1, 3, 16))):
        data[rng.randrange(len(data))] = rng.randrange(256)


def _truncate(rng: random.Random, data: bytearray, fields: Fields) -> None:
    del data[rng.randrange(len(data)):]


def _insert(rng: random.Random, data: bytearray, fields: Fields) -> None:
    at = rng.randrange(len(data) + 1)
    data[at:at] = rng.randbytes(rng.choice((1, 3, 4, 64)))


def _delete(rng: random.Random, data: bytearray, fields: Fields) -> None:
    start = rng.randrange(len(data))
    del data[start:start + rng.choice((1, 3, 4, 64))]


def _duplicate_chunk(rng: random.Random, data: bytearray, fields: Fields) -> None:
    start = rng.randrange(len(data))
    chunk = data[start:start + rng.choice((1, 4, 16, 256))]
    at = rng.randrange(len(data) + 1)
    data[at:at] = chunk


def _overwrite_field(rng: random.Random, data: bytearray, fields: Fields) -> None:
    """Write an extreme value over a header field (or, without a field table,
    over any 1, 2 or 4 bytes near the start), in either byte order."""
    if fields:
        offset, size = rng.choice(fields)
    else:
        size = rng.choice((1, 2, 4))
        offset = rng.randrange(min(len(data), 64))
    value = rng.choice(_EXTREME_VALUES + (rng.getrandbits(32),)) & ((1 << 8 * size) - 1)
    raw = value.to_bytes(size, rng.choice(("little", "big")))
    data[offset:offset + size] = raw[: max(0, len(data) - offset)]


_MUTATORS: tuple[Callable[[random.Random, bytearray, Fields], None], ...] = (
    _flip_bits, _change_bytes, _truncate, _insert, _delete, _duplicate_chunk, _overwrite_field,
)


def mutations(
    data: bytes,
    count: int,
    seed: int,
    fields: Fields = (),
) -> Iterator[bytes]:
    """Yield `count` mutated copies of `data`, each with 1 to 3 random damages.

    `fields` lists the (offset, size) of header fields to overwrite with
    extreme values; without it, overwrites land in the first 64 bytes.
    """
    if not data:
        raise ValueError("need a non-empty file to mutate")
    rng = random.Random(seed)
    for _ in range(count):
        mutated = bytearray(data)
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            if not mutated:
                break
            rng.choice(_MUTATORS)(rng, mutated, fields)
        yield bytes(mutated)
