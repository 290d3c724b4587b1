"""The `.dcae` container, the upstream `.bin` format, and atomic file writes."""
from __future__ import annotations

import os
import random
import struct
import time
import zlib

import numpy as np
import pytest

from dcae_deploy.runtime import fileio
from dcae_deploy.runtime.container import (
    GAIN_CODE_ONE,
    HEADER_SIZE,
    BinFile,
    DcaeFile,
    DcaeHeader,
    gain_of,
    pack,
    pack_bin,
    sniff,
    unpack,
    unpack_bin,
)
from dcae_deploy.runtime.errors import BadInputError, CorruptStreamError, DcaeError
from dcae_deploy.runtime.fileio import write_atomically
from dcae_deploy.runtime.geometry import MAX_PIXELS
from tests.fuzzing import mutations

FINGERPRINT = bytes(range(0xA0, 0xB0))

# The header as the format description states it, independent of the module:
# name -> (offset, little-endian struct code). Pins the format a C++ host
# reads. (Portable files, their margin and side stream: tests/test_portable.py.)
SPEC_FIELDS = {
    "magic": (0, "4s"),
    "version": (4, "B"),
    "flags": (5, "B"),
    "gain_code": (6, "H"),
    "height": (8, "I"),
    "width": (12, "I"),
    "padded_height": (16, "I"),
    "padded_width": (20, "I"),
    "z_height": (24, "H"),
    "z_width": (26, "H"),
    "fingerprint": (28, "16s"),
    "z_length": (44, "I"),
    "y_length": (48, "I"),
    "side_length": (52, "I"),
    "margin": (56, "f"),
    "crc": (60, "I"),
}
CRC_OFFSET = SPEC_FIELDS["crc"][0]


def random_stream(rng: random.Random, words: int) -> bytes:
    """Incompressible bytes of a rANS-like length (whole 32-bit words)."""
    return rng.randbytes(4 * words)


def sample_file(
    height=300, width=517, z_words=20, y_words=300, seed=0, reduced=False
) -> tuple[bytes, DcaeHeader, bytes, bytes]:
    """A valid `.dcae` file that is not portable, and the header and streams it was packed from."""
    rng = random.Random(seed)
    header = DcaeHeader(height, width, FINGERPRINT, reduced)
    z, y = random_stream(rng, z_words), random_stream(rng, y_words)
    return pack(header, z, y), header, z, y


def read_field(data: bytes, name: str):
    offset, code = SPEC_FIELDS[name]
    return struct.unpack_from("<" + code, data, offset)[0]


def with_crc_fixed(data: bytes) -> bytes:
    crc = zlib.crc32(data[CRC_OFFSET + 4:], zlib.crc32(data[:CRC_OFFSET]))
    return data[:CRC_OFFSET] + struct.pack("<I", crc) + data[CRC_OFFSET + 4:]


def with_field(data: bytes, name: str, value) -> bytes:
    """`data` with one header field replaced and the CRC made valid again, so
    that only the check for that field can refuse it."""
    offset, code = SPEC_FIELDS[name]
    patched = bytearray(data)
    struct.pack_into("<" + code, patched, offset, value)
    return with_crc_fixed(bytes(patched))


def assert_refused(data: bytes, *fragments: str) -> str:
    with pytest.raises(CorruptStreamError) as info:
        unpack(data)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message and message
    for fragment in fragments:
        assert fragment in message
    return message


# ---- .dcae: writing and reading back ----------------------------------------


def test_pack_writes_the_documented_layout():
    data, _, z, y = sample_file(reduced=True)
    assert HEADER_SIZE == 64
    assert len(data) == 64 + len(z) + len(y)
    expected = {
        "magic": b"DCAE", "version": 3, "flags": 1, "gain_code": 4096,
        "height": 300, "width": 517, "padded_height": 384, "padded_width": 640,
        "z_height": 6, "z_width": 10, "fingerprint": FINGERPRINT,
        "z_length": len(z), "y_length": len(y), "side_length": 0, "margin": 0.0,
        "crc": zlib.crc32(data[:60] + z + y),
    }
    assert {name: read_field(data, name) for name in SPEC_FIELDS} == expected
    assert data[64:] == z + y


@pytest.mark.parametrize(
    "height, width, reduced",
    [(1, 1, False), (256, 256, True), (300, 517, False), (65535, 1024, True), (1024, 65535, False)],
)
def test_round_trip(height, width, reduced):
    data, header, z, y = sample_file(height, width, seed=height ^ width, reduced=reduced)
    assert unpack(data) == DcaeFile(header, z, y)
    assert unpack(data).header.reduced_precision_entropy is reduced


def test_round_trip_of_minimal_streams_and_bytes_like_input():
    header = DcaeHeader(17, 23, FINGERPRINT)
    data = pack(header, b"z" * 8, b"y" * 8)
    assert unpack(bytearray(data)) == (header, b"z" * 8, b"y" * 8, b"")
    assert unpack(memoryview(data)) == (header, b"z" * 8, b"y" * 8, b"")


def test_header_derives_padded_size_and_z_shape():
    header = DcaeHeader(300, 517, FINGERPRINT)
    assert header.padded_size == (384, 640)
    assert header.z_shape == (6, 10)
    assert DcaeHeader(1, 1, FINGERPRINT).padded_size == (256, 256)


@pytest.mark.parametrize("height, width", [(0, 10), (10, 0), (65536, 10), (8193, 8193)])
def test_header_refuses_sizes_the_codec_cannot_code(height, width):
    with pytest.raises(BadInputError):
        DcaeHeader(height, width, FINGERPRINT)


@pytest.mark.parametrize("fingerprint", [b"", b"x" * 15, b"x" * 17, "x" * 16])
def test_header_refuses_a_fingerprint_that_is_not_16_bytes(fingerprint):
    with pytest.raises(ValueError):
        DcaeHeader(64, 64, fingerprint)


@pytest.mark.parametrize(
    "z, y", [(b"", b"y" * 8), (b"z" * 4, b"y" * 8), (b"z" * 10, b"y" * 8), (b"z" * 8, b"y" * 13)]
)
def test_pack_refuses_streams_no_rans_coder_writes(z, y):
    with pytest.raises(ValueError):
        pack(DcaeHeader(64, 64, FINGERPRINT), z, y)


def test_fingerprint_is_returned_not_compared():
    other = bytes(16)
    data = pack(DcaeHeader(64, 64, other), b"z" * 8, b"y" * 8)
    assert unpack(data).header.fingerprint == other


# ---- .dcae: each check ------------------------------------------------------


@pytest.mark.parametrize("length", [63, 55, 20, 8, 4, 2])
def test_refuses_data_shorter_than_the_header(length):
    data, *_ = sample_file()
    assert_refused(data[:length], "truncated", str(length))


def test_refuses_an_empty_file():
    assert_refused(b"", "empty", "not a .dcae file")


def test_refuses_wrong_magic():
    data, *_ = sample_file()
    assert_refused(b"DCAF" + data[4:], "not a .dcae file")
    assert_refused(b"x", "not a .dcae file")


@pytest.mark.parametrize(
    "magic, kind",
    [(b"\x89PNG\r\n\x1a\n", "PNG image"), (b"\xff\xd8\xff\xe0", "JPEG image")],
)
def test_names_an_image_given_instead_of_a_dcae_file(magic, kind):
    message = assert_refused(magic + bytes(100))
    assert message == f"this is a {kind}, not a .dcae file"
    assert_refused(magic, kind)  # even when shorter than a header


def test_names_an_upstream_bin_given_instead_of_a_dcae_file():
    assert_refused(pack_bin(300, 517, b"y" * 40, b"z" * 8), "upstream DCAE .bin", "not a .dcae file")


@pytest.mark.parametrize("version", [1, 2])
def test_refuses_a_file_of_an_earlier_format_in_one_line(version):
    data, *_ = sample_file()
    message = assert_refused(with_field(data, "version", version))
    assert message == f".dcae format version {version} predates this decoder's format 3; re-encode the image"


@pytest.mark.parametrize("version", [0, 4, 0xFF])
def test_refuses_an_unknown_version(version):
    data, *_ = sample_file()
    assert_refused(with_field(data, "version", version), f"version {version}", "reads format 3")


@pytest.mark.parametrize("flags", [0x04, 0x08, 0x0C, 0x80, 0xFF])
def test_refuses_unknown_flags(flags):
    data, *_ = sample_file()
    assert_refused(with_field(data, "flags", flags), "unknown .dcae flag bits")


# ---- the gain field ---------------------------------------------------------


def test_writers_write_gain_1():
    data, header, *_ = sample_file()
    assert read_field(data, "gain_code") == GAIN_CODE_ONE == 4096
    assert header.gain_code == 4096 and header.gain == 1.0


def test_gain_is_the_code_over_4096_exactly_in_float32():
    codes = np.arange(1, 0x10000)
    gains = np.array([gain_of(int(code)) for code in codes])
    assert np.array_equal(gains, codes / 4096) and np.array_equal(gains.astype(np.float32), gains)
    assert (gain_of(1), gain_of(4096), gain_of(0xFFFF)) == (2**-12, 1.0, 0xFFFF / 4096)


@pytest.mark.parametrize("code", [1, 2048, 8192, 0xFFFF])
def test_any_gain_code_reads_back(code):
    data, header, z, y = sample_file()
    parsed = unpack(with_field(data, "gain_code", code))
    assert parsed == DcaeFile(DcaeHeader(300, 517, FINGERPRINT, gain_code=code), z, y)
    assert pack(*parsed) == with_field(data, "gain_code", code)


def test_refuses_gain_code_0():
    data, *_ = sample_file()
    assert_refused(with_field(data, "gain_code", 0), "gain_code 0")


@pytest.mark.parametrize("code", [0, -1, 0x10000, 4096.0])
def test_header_refuses_a_gain_code_outside_1_to_65535(code):
    with pytest.raises(ValueError, match="gain_code"):
        DcaeHeader(64, 64, FINGERPRINT, gain_code=code)


@pytest.mark.parametrize(
    "height, width",
    [(0, 517), (300, 0), (65536, 517), (0xFFFFFFFF, 517), (8192, 8193)],
)
def test_refuses_original_dimensions_check_dimensions_refuses(height, width):
    assert 8192 * 8193 > MAX_PIXELS  # the last case is over the pixel limit
    data, *_ = sample_file()
    data = with_field(with_field(data, "height", height), "width", width)
    assert_refused(data, "image size")


@pytest.mark.parametrize(
    "field, value", [("padded_height", 256), ("padded_width", 768), ("padded_height", 0)]
)
def test_refuses_a_padded_size_that_does_not_follow_from_the_image_size(field, value):
    data, *_ = sample_file()
    assert_refused(with_field(data, field, value), "padded size", "384x640", "300x517")


@pytest.mark.parametrize("field, value", [("z_height", 5), ("z_width", 0xFFFF), ("z_width", 0)])
def test_refuses_a_z_shape_that_does_not_follow_from_the_image_size(field, value):
    data, *_ = sample_file()
    assert_refused(with_field(data, field, value), "z shape", "6x10")


@pytest.mark.parametrize("cut", [1, 4, 1200])
def test_refuses_a_truncated_payload(cut):
    data, *_ = sample_file()
    assert_refused(data[:-cut], "truncated")


@pytest.mark.parametrize("extra", [b"\0", b"\0" * 4, b"DCAE" * 100])
def test_refuses_trailing_bytes(extra):
    data, *_ = sample_file()
    assert_refused(with_crc_fixed(data + extra), f"{len(extra)} bytes after")


def test_refuses_stream_lengths_promising_more_than_the_file_holds():
    data, *_ = sample_file()
    assert_refused(with_field(data, "y_length", 0xFFFFFFFF), "truncated")
    assert_refused(with_field(data, "z_length", 0xFFFFFFFF), "truncated")


@pytest.mark.parametrize(
    "z_shift, stream, length",
    [(2, "z", 82), (-2, "z", 78), (1200 - 4, "y", 4), (1200, "y", 0), (-80, "z", 0), (-76, "z", 4)],
)
def test_refuses_stream_lengths_no_rans_coder_writes(z_shift, stream, length):
    """Moves the z/y boundary so the total stays right but one length is not a
    whole number of 32-bit words, or is under the 8 bytes of a flushed state."""
    data, _, z, y = sample_file(z_words=20, y_words=300)
    data = with_field(with_field(data, "z_length", len(z) + z_shift), "y_length", len(y) - z_shift)
    assert_refused(data, f"{stream} stream length {length}")


@pytest.mark.parametrize("where", ["payload", "fingerprint", "crc"])
def test_refuses_a_crc_mismatch(where):
    data, *_ = sample_file()
    offsets = {"payload": len(data) - 1, "fingerprint": SPEC_FIELDS["fingerprint"][0], "crc": CRC_OFFSET}
    offset = offsets[where]
    damaged = bytearray(data)
    damaged[offset] ^= 0x10
    assert_refused(bytes(damaged), "CRC")


def test_errors_are_dcae_errors():
    assert issubclass(CorruptStreamError, DcaeError)


# ---- upstream .bin ----------------------------------------------------------


def test_bin_writes_the_upstream_layout():
    y, z = b"Y" * 13, b"Z" * 5
    expected = struct.pack(">HH", 300, 517) + struct.pack(">I", 13) + y + struct.pack(">I", 5) + z
    assert pack_bin(300, 517, y, z) == expected


@pytest.mark.parametrize(
    "height, width, y, z",
    [(300, 517, b"Y" * 13, b"Z" * 5), (65535, 1, b"", b""), (1, 65535, b"\0" * 4, b"")],
)
def test_bin_round_trip(height, width, y, z):
    assert unpack_bin(pack_bin(height, width, y, z)) == BinFile(height, width, y, z)


@pytest.mark.parametrize("height, width", [(0, 5), (5, 0), (65536, 5), (5, 70000)])
def test_pack_bin_refuses_sides_a_uint16_cannot_hold(height, width):
    with pytest.raises(BadInputError):
        pack_bin(height, width, b"", b"")


def assert_bin_refused(data: bytes, *fragments: str) -> None:
    with pytest.raises(CorruptStreamError) as info:
        unpack_bin(data)
    message = str(info.value)
    assert message and "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_bin_checks():
    good = pack_bin(300, 517, b"Y" * 13, b"Z" * 5)
    for length in (0, 3, 11):
        assert_bin_refused(good[:length], "truncated", str(length))
    assert_bin_refused(good[:-1], "truncated", "z stream")
    assert_bin_refused(good[:8 + 13 + 2], "truncated", "y stream")
    assert_bin_refused(good + b"\0", "1 bytes after")
    assert_bin_refused(struct.pack(">HH", 0, 517) + good[4:], "empty side")
    assert_bin_refused(struct.pack(">HH", 300, 0) + good[4:], "empty side")
    assert_bin_refused(good[:4] + struct.pack(">I", 0xFFFFFFFF) + good[8:], "y stream")


def test_sniff():
    dcae, *_ = sample_file()
    assert sniff(dcae) == "dcae"
    assert sniff(dcae[:4]) == "dcae"  # the magic decides; unpack then says what is wrong
    assert sniff(pack_bin(300, 517, b"Y" * 13, b"Z" * 5)) == "bin"
    assert sniff(pack_bin(300, 517, b"", b"")) == "bin"
    assert sniff(b"") is None
    assert sniff(b"\x89PNG\r\n\x1a\n" + bytes(64)) is None
    assert sniff(pack_bin(300, 517, b"Y" * 13, b"Z" * 5)[:-1]) is None


# ---- fuzzing ----------------------------------------------------------------

CALL_TIME_BOUND_S = 0.05


def timed(call, data):
    """Run `call(data)`; return (result or exception, seconds). A slow call is
    timed once more, so a scheduling hiccup on a busy machine is not a failure."""
    for _ in range(2):
        start = time.perf_counter()
        try:
            outcome = call(data)
        except Exception as e:  # noqa: BLE001 - classified by the caller
            outcome = e
        elapsed = time.perf_counter() - start
        if elapsed < CALL_TIME_BOUND_S:
            break
    return outcome, elapsed


def check_fuzz_outcome(outcome, elapsed, data, repack, label):
    assert elapsed < CALL_TIME_BOUND_S, f"{label}: took {elapsed * 1000:.1f} ms"
    if isinstance(outcome, DcaeError):
        message = str(outcome)
        assert message and "\n" not in message, f"{label}: {message!r}"
    elif isinstance(outcome, Exception):
        pytest.fail(f"{label}: raised {type(outcome).__name__}: {outcome}")
    else:
        # Accepted: then it must really be a valid file, byte for byte.
        assert repack(outcome) == data, f"{label}: accepted a file it cannot reproduce"


DCAE_FIELD_SPANS = [(offset, struct.calcsize("<" + code)) for offset, code in SPEC_FIELDS.values()]


def test_fuzz_unpack_raises_only_dcae_errors_and_is_fast():
    """Damaged files are refused with a `DcaeError`, quickly. Each mutation is
    also tried with its CRC repaired, which lets it reach the field checks."""
    bases = [
        sample_file(1, 1, z_words=2, y_words=2, seed=1)[0],
        sample_file(300, 517, z_words=20, y_words=300, seed=2)[0],
        sample_file(4000, 3000, z_words=700, y_words=5000, seed=3, reduced=True)[0],
        pack(DcaeHeader(300, 517, FINGERPRINT, margin=1e-4), b"z" * 80, b"y" * 1200, b"\x00\x00\x01\x00\x00\x00\x80"),
    ]

    def repack(result: DcaeFile) -> bytes:
        return pack(*result)

    calls = 0
    for seed, base in enumerate(bases):
        for index, mutated in enumerate(mutations(base, 700, seed, DCAE_FIELD_SPANS)):
            label = f"base {seed}, mutation {index}"
            outcome, elapsed = timed(unpack, mutated)
            check_fuzz_outcome(outcome, elapsed, mutated, repack, label)
            # With its stored CRC, only an undamaged file may pass (a CRC32
            # collision is a 2**-32 event).
            assert isinstance(outcome, Exception) or mutated == base, f"{label}: damage not detected"
            calls += 1
            if len(mutated) >= HEADER_SIZE:
                repaired = with_crc_fixed(mutated)
                outcome, elapsed = timed(unpack, repaired)
                check_fuzz_outcome(outcome, elapsed, repaired, repack, label + " (CRC repaired)")
                calls += 1
    assert calls >= 2000


def test_fuzz_unpack_bin_and_sniff():
    base = pack_bin(300, 517, random.Random(4).randbytes(1200), random.Random(5).randbytes(80))

    def repack(result: BinFile) -> bytes:
        return pack_bin(*result)

    for index, mutated in enumerate(mutations(base, 600, seed=10)):
        outcome, elapsed = timed(unpack_bin, mutated)
        check_fuzz_outcome(outcome, elapsed, mutated, repack, f".bin mutation {index}")
        assert sniff(mutated) in ("dcae", "bin", None)
        if sniff(mutated) == "bin":
            assert not isinstance(outcome, Exception)


def test_mutations_are_deterministic_and_damage_the_file():
    data, *_ = sample_file()
    first = list(mutations(data, 50, seed=7))
    assert first == list(mutations(data, 50, seed=7))
    assert first != list(mutations(data, 50, seed=8))
    assert sum(m != data for m in first) >= 45
    assert len({len(m) for m in first}) > 3  # not only in-place changes


# ---- write_atomically -------------------------------------------------------


def test_write_atomically_writes_a_new_file(tmp_path):
    target = tmp_path / "out.dcae"
    write_atomically(target, b"hello")
    assert target.read_bytes() == b"hello"
    assert os.listdir(tmp_path) == ["out.dcae"]


def test_write_atomically_honours_the_umask(tmp_path):
    old_mask = os.umask(0o027)
    try:
        write_atomically(tmp_path / "out.dcae", b"x")
    finally:
        os.umask(old_mask)
    assert (tmp_path / "out.dcae").stat().st_mode & 0o777 == 0o640


def test_write_atomically_replaces_only_when_complete(tmp_path, monkeypatch):
    target = tmp_path / "out.dcae"
    target.write_bytes(b"old")
    seen_during_write = []
    real_fsync = os.fsync

    def fsync_and_look(fd):
        real_fsync(fd)
        seen_during_write.append((target.read_bytes(), len(os.listdir(tmp_path))))

    monkeypatch.setattr(fileio.os, "fsync", fsync_and_look)
    write_atomically(target, b"new contents")
    assert seen_during_write == [(b"old", 2)]  # old file intact beside the temp file
    assert target.read_bytes() == b"new contents"
    assert os.listdir(tmp_path) == ["out.dcae"]


class _FailingHalfway:
    """A file object that writes half of what it is given, then fails as a full disk would."""

    def __init__(self, file):
        self.file = file

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def write(self, data):
        self.file.write(data[: len(data) // 2])
        self.file.flush()
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("existing", [None, b"old"])
def test_write_atomically_leaves_nothing_when_a_write_fails_midway(tmp_path, monkeypatch, existing):
    target = tmp_path / "out.dcae"
    if existing is not None:
        target.write_bytes(existing)
    monkeypatch.setattr(fileio, "open", lambda fd, mode: _FailingHalfway(open(fd, mode)), raising=False)
    with pytest.raises(OSError, match="No space"):
        write_atomically(target, b"x" * 1000)
    expected = [] if existing is None else ["out.dcae"]
    assert os.listdir(tmp_path) == expected
    if existing is not None:
        assert target.read_bytes() == existing


def test_write_atomically_cleans_up_when_the_rename_fails(tmp_path):
    target = tmp_path / "out.dcae"
    target.mkdir()  # a directory cannot be replaced by a file
    with pytest.raises(OSError):
        write_atomically(target, b"data")
    assert os.listdir(tmp_path) == ["out.dcae"]
    assert target.is_dir()


def test_write_atomically_into_a_missing_directory_fails_cleanly(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_atomically(tmp_path / "missing" / "out.dcae", b"data")
    assert os.listdir(tmp_path) == []
