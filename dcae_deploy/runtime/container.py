"""The `.dcae` container, and the upstream DCAE `.bin` format.

`.dcae` format 3 (little-endian, 64-byte header, then the payload):

    offset size  field
         0    4  magic b"DCAE"
         4    1  format version (3)
         5    1  flags: bit 0 entropy path in reduced precision; bit 1
                 portable; other bits 0
         6    2  gain_code (uint16, 1..65535): the quantization gain
                 a = float32(gain_code) / 4096 (`gain_of`)
         8    4  original height        12  4  original width
        16    4  padded height          20  4  padded width
        24    2  z height               26  2  z width
        28   16  fingerprint (raw bytes): of the entropy MODEL for a portable
                 file, of the setup (model, precision, backend) otherwise
        44    4  z stream length        48  4  y stream length
        52    4  side stream length (never 0 when portable, 0 otherwise)
        56    4  margin (float32, natural log; 0 < margin <= 0.01 when
                 portable, 0 otherwise)
        60    4  CRC32 (zlib) of bytes 0..59 followed by the payload
        64       payload: z stream, y stream, side stream

A portable file decodes on any setup whose scales stay within the margin of
the encoder's (the side stream's threshold shifts and its list of the
elements near an index boundary: `dcae_deploy.runtime.portable`);
reduced-precision entropy paths are never portable. Files of earlier format
versions are refused: they are re-encoded, not read.

The padded size and z shape follow from the original size; they are stored
so that a host without `geometry` can allocate, and checked on reading.

Upstream `.bin` (big-endian, from `compress_and_decompress.py`): uint16 h,
uint16 w (original size), uint32 len_y, y bytes, uint32 len_z, z bytes; no
magic, version or checksum.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from .errors import BadInputError, CorruptStreamError
from .geometry import check_dimensions, padded_size, z_shape_for
from .portable import MAX_MARGIN

MAGIC = b"DCAE"
FORMAT_VERSION = 3
FINGERPRINT_SIZE = 16
FLAG_REDUCED_PRECISION_ENTROPY = 0x01
FLAG_PORTABLE = 0x02
KNOWN_FLAGS = FLAG_REDUCED_PRECISION_ENTROPY | FLAG_PORTABLE
# The quantization gain a of the quality knob travels as gain_code = a * 4096:
# a 16-bit integer over a power of two, so float32(gain_code) / 4096 is exact
# in float32 in every language. 4096 is a = 1, the fixed-rate model's rate
# (`dcae_deploy.runtime.quality`).
GAIN_CODE_ONE = 4096
MAX_GAIN_CODE = 0xFFFF

# Everything up to the CRC, which covers these bytes and the payload.
_HEADER_BEFORE_CRC = struct.Struct("<4sBBHIIIIHH16sIIIf")
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER_BEFORE_CRC.size + _CRC.size  # 64
_VERSION_OFFSET = 4

_UINT32_MAX = 0xFFFFFFFF
# Our rANS coder emits whole 32-bit words and flushes a 32-bit state at the
# end, so a stream is always a multiple of 4 bytes and never under 8.
_STREAM_WORD = 4
_MIN_STREAM_LENGTH = 8

_FOREIGN_MAGICS = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
)


def gain_of(gain_code: int) -> float:
    """The quantization gain a header's `gain_code` stands for (4096: 1.0)."""
    return float(np.float32(gain_code) / np.float32(GAIN_CODE_ONE))


@dataclass(frozen=True)
class DcaeHeader:
    """What a `.dcae` header says about its image; stream lengths come from the streams."""

    height: int
    width: int
    fingerprint: bytes
    # Bit 0 of the flags: the entropy-parameter path ran in reduced precision,
    # so the file decodes only with the same bundle and backend.
    reduced_precision_entropy: bool = False
    # > 0: a portable file (flag bit 1) whose side stream covers the elements
    # within this margin (natural log) of an index boundary.
    margin: float = 0.0
    gain_code: int = GAIN_CODE_ONE

    def __post_init__(self) -> None:
        check_dimensions(self.height, self.width)
        if not isinstance(self.fingerprint, bytes) or len(self.fingerprint) != FINGERPRINT_SIZE:
            raise ValueError(f"fingerprint must be {FINGERPRINT_SIZE} bytes, got {self.fingerprint!r}")
        if self.margin and self.reduced_precision_entropy:
            raise ValueError("only files with a float32 entropy path are portable")
        if not (isinstance(self.gain_code, int) and 1 <= self.gain_code <= MAX_GAIN_CODE):
            raise ValueError(f"gain_code must be in 1..{MAX_GAIN_CODE}, got {self.gain_code!r}")
        # Stored as float32: keep the value a reader will see.
        object.__setattr__(self, "margin", float(np.float32(self.margin)))

    @property
    def portable(self) -> bool:
        return self.margin > 0

    @property
    def gain(self) -> float:
        return gain_of(self.gain_code)

    @property
    def flags(self) -> int:
        return ((FLAG_REDUCED_PRECISION_ENTROPY if self.reduced_precision_entropy else 0)
                | (FLAG_PORTABLE if self.portable else 0))

    @property
    def padded_size(self) -> tuple[int, int]:
        return padded_size(self.height, self.width)

    @property
    def z_shape(self) -> tuple[int, int]:
        return z_shape_for(self.height, self.width)


class DcaeFile(NamedTuple):
    header: DcaeHeader
    z: bytes
    y: bytes
    side: bytes = b""  # the portable side stream (`dcae_deploy.runtime.portable`)


class BinFile(NamedTuple):
    """An upstream `.bin`, fields in file order."""

    height: int
    width: int
    y: bytes
    z: bytes


def _stream_length_problem(name: str, length: int) -> str | None:
    if length % _STREAM_WORD or length < _MIN_STREAM_LENGTH:
        return (
            f"{name} stream length {length} is not a rANS stream length "
            f"(a multiple of {_STREAM_WORD}, at least {_MIN_STREAM_LENGTH})"
        )
    if length > _UINT32_MAX:
        return f"{name} stream length {length} does not fit in 32 bits"
    return None


def pack(header: DcaeHeader, z: bytes, y: bytes, side: bytes = b"") -> bytes:
    """The bytes of a `.dcae` file holding the streams."""
    for name, stream in (("z", z), ("y", y)):
        problem = _stream_length_problem(name, len(stream))
        if problem:
            # The coder produced it, not the user: a bug, not a bad input.
            raise ValueError(problem)
    if bool(side) != header.portable:
        raise ValueError("a portable file carries a side stream, and only a portable file")
    if len(side) > _UINT32_MAX:
        raise ValueError(f"side stream of {len(side)} bytes does not fit in 32 bits")
    before_crc = _HEADER_BEFORE_CRC.pack(MAGIC, FORMAT_VERSION, header.flags, header.gain_code, header.height,
                                         header.width, *header.padded_size, *header.z_shape, header.fingerprint,
                                         len(z), len(y), len(side), header.margin)
    crc = zlib.crc32(side, zlib.crc32(y, zlib.crc32(z, zlib.crc32(before_crc))))
    return b"".join((before_crc, _CRC.pack(crc), z, y, side))


def unpack(data: bytes) -> DcaeFile:
    """Parse and check a `.dcae` file.

    Every field and the CRC are checked before the streams are copied out;
    any problem raises `CorruptStreamError` with a one-line reason.
    """
    view = memoryview(data)
    head = bytes(view[: len(MAGIC)])
    # A few bytes that could still become b"DCAE" count as truncated.
    if not head or not MAGIC.startswith(head):
        raise CorruptStreamError(_not_dcae_reason(view))
    if len(view) <= _VERSION_OFFSET:
        raise CorruptStreamError(f"truncated .dcae file: {len(view)} bytes, no format version")
    version = view[_VERSION_OFFSET]
    if 0 < version < FORMAT_VERSION:
        raise CorruptStreamError(f".dcae format version {version} predates this decoder's format "
                                 f"{FORMAT_VERSION}; re-encode the image")
    if version != FORMAT_VERSION:
        raise CorruptStreamError(f".dcae format version {version} is not supported (this decoder reads format "
                                 f"{FORMAT_VERSION})")
    if len(view) < HEADER_SIZE:
        raise CorruptStreamError(f"truncated .dcae file: {len(view)} bytes, the header alone is {HEADER_SIZE}")

    (_, _, flags, gain_code, height, width, padded_height, padded_width, z_height, z_width, fingerprint,
     z_length, y_length, side_length, margin) = _HEADER_BEFORE_CRC.unpack_from(view)
    (stored_crc,) = _CRC.unpack_from(view, _HEADER_BEFORE_CRC.size)

    if flags & ~KNOWN_FLAGS:
        raise CorruptStreamError(f"unknown .dcae flag bits 0x{flags & ~KNOWN_FLAGS:02x}")
    portable = bool(flags & FLAG_PORTABLE)
    if portable and flags & FLAG_REDUCED_PRECISION_ENTROPY:
        raise CorruptStreamError(".dcae flags say both portable and reduced-precision entropy")
    if portable and not (0.0 < margin <= MAX_MARGIN):  # also refuses NaN
        raise CorruptStreamError(f".dcae portable margin {margin} is outside (0, {MAX_MARGIN}]")
    if portable and not side_length:
        raise CorruptStreamError(".dcae portable file has no side stream")
    if not portable and (margin != 0.0 or side_length):
        raise CorruptStreamError(".dcae file that is not portable has a margin or a side stream")
    if not gain_code:
        raise CorruptStreamError(f".dcae gain_code 0 is not a gain (1..{MAX_GAIN_CODE})")
    try:
        check_dimensions(height, width)
    except BadInputError as e:
        raise CorruptStreamError(f".dcae header has an impossible image size: {e}") from None
    expected_padded, expected_z = padded_size(height, width), z_shape_for(height, width)
    if (padded_height, padded_width) != expected_padded:
        raise CorruptStreamError(
            f".dcae padded size {padded_height}x{padded_width} does not match "
            f"{_hxw(expected_padded)} for a {height}x{width} image"
        )
    if (z_height, z_width) != expected_z:
        raise CorruptStreamError(
            f".dcae z shape {z_height}x{z_width} does not match "
            f"{_hxw(expected_z)} for a {height}x{width} image"
        )

    payload = view[HEADER_SIZE:]
    promised = z_length + y_length + side_length
    if promised > len(payload):
        raise CorruptStreamError(
            f"truncated .dcae file: header promises {promised} payload bytes, found {len(payload)}"
        )
    if promised < len(payload):
        raise CorruptStreamError(f".dcae file has {len(payload) - promised} bytes after its payload")
    for name, length in (("z", z_length), ("y", y_length)):
        problem = _stream_length_problem(name, length)
        if problem:
            raise CorruptStreamError(problem)
    crc = zlib.crc32(payload, zlib.crc32(view[: _HEADER_BEFORE_CRC.size]))
    if crc != stored_crc:
        raise CorruptStreamError(
            f".dcae CRC mismatch (stored 0x{stored_crc:08x}, computed 0x{crc:08x}): the file is damaged"
        )

    header = DcaeHeader(height, width, fingerprint, bool(flags & FLAG_REDUCED_PRECISION_ENTROPY),
                        margin if portable else 0.0, gain_code)
    y_end = z_length + y_length
    return DcaeFile(header, bytes(payload[:z_length]), bytes(payload[z_length:y_end]), bytes(payload[y_end:]))


def _hxw(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _not_dcae_reason(view: memoryview) -> str:
    if not view:
        return "empty file, not a .dcae file"
    head = bytes(view[:8])
    for magic, what in _FOREIGN_MAGICS:
        if head.startswith(magic):
            return f"this is {what}, not a .dcae file"
    if _is_bin(view):
        return "this is an upstream DCAE .bin file, not a .dcae file"
    return "not a .dcae file (no DCAE magic)"


# ---- upstream .bin ----------------------------------------------------------

_BIN_HEAD = struct.Struct(">HHI")  # h, w, len_y
_BIN_LENGTH = struct.Struct(">I")  # len_z
_BIN_MIN_SIZE = _BIN_HEAD.size + _BIN_LENGTH.size


def pack_bin(height: int, width: int, y: bytes, z: bytes) -> bytes:
    """The bytes of an upstream `.bin` file."""
    if not (0 < height <= 0xFFFF and 0 < width <= 0xFFFF):
        raise BadInputError(f"upstream .bin holds sides of 1..65535 px, not {height}x{width}")
    for name, stream in (("y", y), ("z", z)):
        if len(stream) > _UINT32_MAX:
            raise ValueError(f"{name} stream of {len(stream)} bytes does not fit in a .bin")
    return b"".join((_BIN_HEAD.pack(height, width, len(y)), y, _BIN_LENGTH.pack(len(z)), z))


def _bin_layout(view: memoryview) -> tuple[int, int, slice, slice]:
    """(height, width, y slice, z slice) of a `.bin`; `CorruptStreamError` if it is not one.

    Works on offsets only, so that sniffing a large file copies nothing.
    """
    if len(view) < _BIN_MIN_SIZE:
        raise CorruptStreamError(f"truncated .bin file: {len(view)} bytes, at least {_BIN_MIN_SIZE} needed")
    height, width, y_length = _BIN_HEAD.unpack_from(view)
    if not height or not width:
        raise CorruptStreamError(f".bin header has an empty side ({height}x{width})")
    y_end = _BIN_HEAD.size + y_length
    if y_end + _BIN_LENGTH.size > len(view):
        raise CorruptStreamError(
            f"truncated .bin file: y stream of {y_length} bytes runs past the end ({len(view)} bytes)"
        )
    (z_length,) = _BIN_LENGTH.unpack_from(view, y_end)
    z_start = y_end + _BIN_LENGTH.size
    z_end = z_start + z_length
    if z_end > len(view):
        raise CorruptStreamError(
            f"truncated .bin file: z stream of {z_length} bytes runs past the end ({len(view)} bytes)"
        )
    if z_end < len(view):
        raise CorruptStreamError(f".bin file has {len(view) - z_end} bytes after its z stream")
    return height, width, slice(_BIN_HEAD.size, y_end), slice(z_start, z_end)


def _is_bin(view: memoryview) -> bool:
    try:
        _bin_layout(view)
    except CorruptStreamError:
        return False
    return True


def unpack_bin(data: bytes) -> BinFile:
    """Parse an upstream `.bin`; `CorruptStreamError` if its lengths do not add up."""
    view = memoryview(data)
    height, width, y_slice, z_slice = _bin_layout(view)
    return BinFile(height, width, bytes(view[y_slice]), bytes(view[z_slice]))


def sniff(data: bytes) -> Literal["dcae", "bin"] | None:
    """Which format `data` claims to be, without checking it fully.

    A `.bin` could in principle start with b"DCAE" (a 17475x16709 image), but
    that is over `MAX_PIXELS`, so the magic decides.
    """
    view = memoryview(data)
    if bytes(view[: len(MAGIC)]) == MAGIC:
        return "dcae"
    if _is_bin(view):
        return "bin"
    return None
