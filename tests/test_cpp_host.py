"""The C++ host (hosts/cpp): its parts against the Python runtime's on the
same inputs, its round trip, and its refusals of bad input.

The binaries are built by `.ci/run` (and here, incrementally, if missing or
stale): build/cpp/dcae-host and build/cpp/dcae-probe. DCAE_CPP_BUILD names
another build directory: hosts/cpp/sanitize.sh runs these tests on an
AddressSanitizer + UBSan build that way.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

from dcae_deploy.runtime.codec import Codec
from dcae_deploy.runtime.container import unpack
from dcae_deploy.runtime.entropy import build_indexes
from dcae_deploy.runtime.errors import DcaeError
from dcae_deploy.runtime.imaging import load_image
from dcae_deploy.runtime.rans import RansStreamDecoder, encode_with_indexes
from tests.fuzzing import mutations

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / os.environ.get("DCAE_CPP_BUILD", "build/cpp")
# (offset, size) of the .dcae header fields, for the fuzzer's overwrites.
DCAE_FIELDS = [(4, 1), (5, 1), (6, 2), (8, 4), (12, 4), (16, 4), (20, 4), (24, 2), (26, 2), (28, 16),
                  (44, 4), (48, 4), (52, 4), (56, 4), (60, 4)]


def _build_host() -> None:
    """Configure once, then an incremental build (a no-op when CI built it)."""
    if shutil.which("cmake") is None:
        pytest.fail("cmake is not installed: the C++ host cannot be built (see README, C++ host)")
    # CMake looks for OpenVINO's wheel in the virtual environment running the tests.
    env = dict(os.environ, VIRTUAL_ENV=sys.prefix)
    steps = [["cmake", "--build", str(BUILD), "-j2"]]
    if not (BUILD / "CMakeCache.txt").exists():
        steps.insert(0, ["cmake", "-S", str(REPO / "hosts" / "cpp"), "-B", str(BUILD)])
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, env=env)
        if done.returncode:
            pytest.fail(f"{' '.join(step)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


@pytest.fixture(scope="session")
def host() -> Path:
    _build_host()
    return BUILD / "dcae-host"


@pytest.fixture(scope="session")
def probe(host) -> Path:
    return BUILD / "dcae-probe"


def run(binary: Path, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=timeout)


def assert_refused(done: subprocess.CompletedProcess, *words: str, status: int = 1) -> str:
    """One line on stderr naming the problem, a non-zero exit, no crash."""
    assert done.returncode == status, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(("dcae-host: error: ", "dcae-probe: error: ")), done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def openvino_codec(tiny_bundle):
    return Codec(tiny_bundle, backend="openvino", threads=2)


# ---- rANS ---------------------------------------------------------------------------------

def _escape_heavy_symbols(rng, offsets, lengths, indexes):
    """Symbols mostly inside their tables, with escapes on both sides up to
    the largest raw value compressai codes (2**28 - 1)."""
    low = offsets[indexes]
    high = low + lengths[indexes] - 2  # values at or above escape
    symbols = rng.integers(low, high + 1)
    escapes = rng.random(indexes.size) < 0.05
    below = low - rng.integers(1, 1 << 20, indexes.size)
    above = high + rng.integers(0, 1 << 20, indexes.size)
    symbols = np.where(escapes, np.where(rng.random(indexes.size) < 0.5, below, above), symbols)
    # The extremes: raw 2**28 - 1 on each side of one table.
    symbols[:2] = [low[0] - (1 << 27), high[1] + (1 << 27) - 1]
    return symbols.astype(np.int32)


@pytest.mark.parametrize("which", ["gaussian", "z"])
def test_rans_streams_are_byte_identical_to_python_escapes_included(tiny_bundle, probe, tmp_path, which):
    from dcae_deploy.runtime.bundle import Bundle

    tables = Bundle.open(tiny_bundle).entropy
    cdfs, lengths, offsets = tables.gaussian if which == "gaussian" else tables.z[1:]
    rng = np.random.default_rng(7)
    indexes = rng.integers(0, lengths.size, 20000).astype(np.int32)
    symbols = _escape_heavy_symbols(rng, offsets, lengths, indexes)
    arrays = tmp_path / "in.npz"
    np.savez(arrays, symbols=symbols, indexes=indexes, cdfs=cdfs, cdf_lengths=lengths, offsets=offsets)

    done = run(probe, "rans-encode", arrays, tmp_path / "cpp.bin")
    assert done.returncode == 0, done.stderr
    python_stream = encode_with_indexes(symbols, indexes, cdfs, lengths, offsets)
    assert (tmp_path / "cpp.bin").read_bytes() == python_stream

    # The C++ decoder reads the stream back, escapes included ...
    (tmp_path / "python.bin").write_bytes(python_stream)
    done = run(probe, "rans-decode", arrays, tmp_path / "python.bin", tmp_path / "decoded.npy")
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.load(tmp_path / "decoded.npy"), symbols)
    # ... and on damaged streams does what the Python decoder does: refuse,
    # or (damage in an escape's raw bits) decode the same other symbols.
    middle = len(python_stream) // 2
    for damaged in (python_stream[:-4], python_stream + bytes(4), python_stream[:4] + b"\x01" + python_stream[5:],
                    python_stream[:middle] + bytes([python_stream[middle] ^ 0x10]) + python_stream[middle + 1:]):
        (tmp_path / "damaged.bin").write_bytes(damaged)
        done = run(probe, "rans-decode", arrays, tmp_path / "damaged.bin", tmp_path / "damaged.npy")
        try:
            decoder = RansStreamDecoder(damaged)
            python_symbols = decoder.decode(indexes, cdfs, lengths, offsets)
            decoder.finish()
        except DcaeError:
            assert_refused(done, "rANS")
        else:
            assert done.returncode == 0 and np.array_equal(np.load(tmp_path / "damaged.npy"), python_symbols)


def test_rans_refuses_values_too_far_to_code(tiny_bundle, probe, tmp_path):
    """raw >= 2**28 hangs compressai's encoder; both coders refuse it."""
    from dcae_deploy.runtime.bundle import Bundle

    cdfs, lengths, offsets = Bundle.open(tiny_bundle).entropy.gaussian
    symbols = np.array([0, int(offsets[3]) - (1 << 27) - 1], np.int32)
    indexes = np.array([0, 3], np.int32)
    np.savez(tmp_path / "in.npz", symbols=symbols, indexes=indexes, cdfs=cdfs, cdf_lengths=lengths, offsets=offsets)
    with pytest.raises(DcaeError, match="too far"):
        encode_with_indexes(symbols, indexes, cdfs, lengths, offsets)
    assert_refused(run(probe, "rans-encode", tmp_path / "in.npz", tmp_path / "out.bin"), "too far")
    assert not (tmp_path / "out.bin").exists()


def test_scale_indexes_match_python_at_every_boundary(tiny_bundle, probe, tmp_path):
    from dcae_deploy.runtime.bundle import Bundle

    tables = Bundle.open(tiny_bundle).entropy
    table, bound = tables.gaussian_scale_table, tables.gaussian_scale_bound
    rng = np.random.default_rng(3)
    # Each table entry, its float32 neighbours, the bound, and specials.
    scales = np.concatenate([table, np.nextafter(table, np.float32(np.inf)), np.nextafter(table, np.float32(0)),
                             [bound, np.nextafter(bound, np.float32(0)), 0, -1, np.inf, -np.inf, np.nan, 1e30],
                             np.exp(rng.uniform(-4, 6, 5000))]).astype(np.float32)
    np.savez(tmp_path / "in.npz", scales=scales, scale_table=table, scale_bound=bound)
    done = run(probe, "indexes", tmp_path / "in.npz", tmp_path / "out.npy")
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.load(tmp_path / "out.npy"), build_indexes(scales, table, float(bound)))


# ---- the side stream --------------------------------------------------------------------------

def _side_stream(k: int, entries: list[tuple[int, int]], pad_bits: str = "") -> bytes:
    """A side stream without shifts, its marked list written from the spec, for the refusal tests."""
    bits, previous = "", -1
    for position, bit in entries:
        gap = position - previous - 1
        bits += "1" * (gap >> k) + "0" + (format(gap & ((1 << k) - 1), f"0{k}b") if k else "") + str(bit)
        previous = position
    bits += pad_bits
    bits += "0" * (-len(bits) % 8)
    body = bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))
    return b"\x00" + bytes([k]) + struct.pack("<I", len(entries)) + body


def test_side_stream_reader_follows_the_spec(probe, tmp_path):
    entries = [(0, 1), (5, 0), (6, 1), (300, 0), (999, 1)]
    for k in (0, 2, 5):
        done = _probe_parse(probe, tmp_path, _side_stream(k, entries), 1000)
        assert done.returncode == 0, done.stderr
        assert np.load(tmp_path / "marks.npy").tolist() == [list(e) for e in entries]
        assert done.stdout.split() == ["1", "0"]  # no shifts

    good = _side_stream(2, entries)
    refusals = {
        "Rice parameter": b"\x00" + bytes([31]) + good[2:],
        "lists no element": b"\x00" + bytes([2]) + struct.pack("<I", 0) + good[6:],
        "lists 1001 elements": b"\x00" + bytes([2]) + struct.pack("<I", 1001) + good[6:],
        "past the latent": _side_stream(0, [(1000, 1)]),
        "gap longer": b"\x00" + bytes([0]) + struct.pack("<I", 1) + b"\xff" * 200,
        "ends before": good[:-2],
        "padding": _side_stream(2, entries, pad_bits="1"),
        "bytes after": good + b"\0",
        "shorter than its 5-byte head": good[:4],
    }
    for words, data in refusals.items():
        assert_refused(_probe_parse(probe, tmp_path, data, 1000), words)


def test_side_streams_are_byte_identical_to_python_and_parsed_alike(tiny_bundle, probe, tmp_path):
    """Marking and the side stream's bytes (without shifts) as
    dcae_deploy.runtime.portable writes them, on scales crowded around the
    index boundaries; the reader agrees with the Python reader on damaged
    streams (same entries, or both refuse)."""
    from dcae_deploy.runtime.bundle import Bundle
    from dcae_deploy.runtime.portable import NO_SHIFTS, Thresholds, decode_side_stream, encode_side_stream, mark

    tables = Bundle.open(tiny_bundle).entropy
    table, bound = tables.gaussian_scale_table, tables.gaussian_scale_bound
    thresholds = Thresholds.from_table(table, float(bound))
    rng = np.random.default_rng(11)
    for margin in (4e-5, 1e-3, 0.01):
        near = table[rng.integers(0, table.size - 1, 4000)] * np.exp(rng.uniform(-2 * margin, 2 * margin, 4000))
        scales = np.concatenate([near, np.exp(rng.uniform(-3, 5, 4000)), [0, -1, np.nan, np.inf]]).astype(np.float32)
        rng.shuffle(scales)
        np.savez(tmp_path / "in.npz", scales=scales, scale_table=table, scale_bound=bound)
        margin32 = float(np.float32(margin))
        done = run(probe, "side-mark", tmp_path / "in.npz", repr(margin32), tmp_path / "side.bin")
        assert done.returncode == 0, done.stderr
        positions, bits = mark(scales, build_indexes(scales, table, float(bound)), thresholds, margin32)
        python_side = encode_side_stream(NO_SHIFTS, positions, bits, scales.size)
        assert 1000 < positions.size < 3000
        assert (tmp_path / "side.bin").read_bytes() == python_side

    outcomes = {"same": 0, "refused": 0}
    for damaged in mutations(python_side, 400, seed=9):
        done = _probe_parse(probe, tmp_path, damaged, scales.size)
        parsed = _assert_parsed_alike(done, tmp_path, lambda: decode_side_stream(damaged, scales.size))
        outcomes["same" if parsed else "refused"] += 1
    assert outcomes["refused"] > 200 and outcomes["same"] > 10, outcomes


# ---- threshold shifts -------------------------------------------------------------------------
#
# The latents of these tests are made here, not computed by a model, so the
# encoder's choices on them are the same on every CPU; on a model's scales
# only invariants are asserted (both encoders agree, K is one the margin
# allows), since the choices there follow the CPU's float path.

def _crowded_latent(rng, table, margin: float, shape: tuple, spread: float = 0.4, width: float = 2) -> np.ndarray:
    """float32 scales of a (1, C, h, w) latent crowded around the index
    boundaries: per channel a cluster (`width` margins either side) at its
    own offset among the 16 shifted windows (so that blocks choose different
    shifts), a `spread` fraction over all of them (so that every shift leaves
    some elements listed), far scales, and the specials."""
    channels, size = shape[1], int(np.prod(shape))
    # Where the clusters and the spread lie, in margins from a critical value.
    clusters, spreads = (-15, 17), (-15, 17)
    log_critical = np.log(table[rng.integers(0, table.size - 1, size)].astype(np.float64))
    cluster = np.repeat(rng.uniform(clusters[0] * margin, clusters[1] * margin, channels), size // channels)
    logs = log_critical + cluster + rng.uniform(-width * margin, width * margin, size)
    which = rng.random(size)
    logs = np.where(which < spread, log_critical + rng.uniform(spreads[0] * margin, spreads[1] * margin, size), logs)
    logs = np.where(which > 0.85, rng.uniform(-3, 5, size), logs)
    scales = np.exp(logs).astype(np.float32)
    scales[rng.choice(size, 4, replace=False)] = [0, -1, np.nan, np.inf]
    return scales.reshape(shape)


def _probe_encode_portable(probe, tmp_path, scales, table, bound, margin,
                           indexes=None) -> tuple[list[int], np.ndarray, bytes]:
    arrays = {} if indexes is None else {"indexes": indexes}
    np.savez(tmp_path / "in.npz", scales=scales, scale_table=table, scale_bound=bound, **arrays)
    done = run(probe, "portable-encode", tmp_path / "in.npz", repr(margin), tmp_path / "idx.npy", tmp_path / "side.bin")
    assert done.returncode == 0, done.stderr
    return ([int(v) for v in done.stdout.split()], np.load(tmp_path / "idx.npy"),
            (tmp_path / "side.bin").read_bytes())


def _probe_parse(probe, tmp_path, data: bytes, total) -> subprocess.CompletedProcess:
    (tmp_path / "parse.bin").write_bytes(data)
    return run(probe, "side-parse", tmp_path / "parse.bin", "-" if total is None else total,
               tmp_path / "marks.npy", tmp_path / "choices.npy")


def _assert_parsed_alike(done, tmp_path, parse) -> bool:
    """The probe's side-parse run and the Python reader (`parse()`) agree:
    the same entries and shifts, or both refuse. True when parsed."""
    try:
        python = parse()
    except DcaeError:
        assert_refused(done, "side stream")
        return False
    assert done.returncode == 0, done.stderr
    marks = np.load(tmp_path / "marks.npy")
    assert marks[:, 0].tolist() == python.positions.tolist() and marks[:, 1].tolist() == python.bits.tolist()
    count, block = map(int, done.stdout.split())
    assert (count, block) == (python.shifts.count, python.shifts.block)
    assert np.load(tmp_path / "choices.npy").tolist() == python.shifts.choices.tolist()
    return True


def test_threshold_shifts_are_chosen_and_written_as_python_does(tiny_bundle, probe, tmp_path):
    """encode_portable in C++: on latents crowded around the index boundaries,
    the same choice of block length, K and per-block shifts, the same shifted
    indexes and the same side stream bytes as dcae_deploy.runtime.portable,
    for margins that allow K = 16 and 4, plane sizes of which only some
    multiples are whole, and latents where parts of a plane, a plane or
    several planes make the best block; the reader reads them back alike,
    with the latent's size known or not (inspect)."""
    from dcae_deploy.runtime.bundle import Bundle
    from dcae_deploy.runtime.portable import Thresholds, decode_side_stream, encode_portable

    tables = Bundle.open(tiny_bundle).entropy
    table, bound = tables.gaussian_scale_table, tables.gaussian_scale_bound
    thresholds = Thresholds.from_table(table, float(bound))
    rng = np.random.default_rng(13)
    shapes = ((1, 16, 12, 16), (1, 6, 9, 14))
    # Spread over every shift's window: each block keeps some listed, and
    # small blocks pay. Tight clusters per channel alone: nothing listed,
    # blocks of a plane or more pay.
    cases = [(margin, shape, 0.4, 2) for margin in (4e-5, 1e-3, 0.01) for shape in shapes]
    cases += [(1e-3, shape, 0.0, 0.5) for shape in shapes]
    counts, planes, listed = set(), set(), 0
    for margin, shape, spread, width in cases:
        margin32 = float(np.float32(margin))
        scales = _crowded_latent(rng, table, margin32, shape, spread, width)
        expected = encode_portable(scales, build_indexes(scales, table, float(bound)), thresholds, margin32)
        assert expected.shifts.count <= thresholds.largest_shift_count(margin32), (margin, shape)
        counts.add(expected.shifts.count)
        listed += expected.listed
        if expected.shifts.count > 1:
            planes.add(expected.shifts.block / (shape[2] * shape[3]))
        stats, indexes, side = _probe_encode_portable(probe, tmp_path, scales, table, bound, margin32)
        assert stats == [expected.shifts.count, expected.shifts.block, expected.listed], (margin, shape)
        assert side == expected.side, (margin, shape)
        assert np.array_equal(indexes, expected.indexes.reshape(-1)), (margin, shape)
        for total in (scales.size, None):
            done = _probe_parse(probe, tmp_path, side, total)
            assert _assert_parsed_alike(done, tmp_path, lambda: decode_side_stream(side, total))
    # The margin bounds K by the table's spacing.
    assert counts >= {4, 16} and counts <= {1, 4, 8, 16}, counts
    assert listed > 100 and min(planes) < 1 <= max(planes), (listed, planes)

    # Nothing near a boundary: no shifts, a one-byte side stream.
    middles = np.sqrt(table[:-2] * table[1:-1])
    scales = middles[rng.integers(0, middles.size, 960)].astype(np.float32).reshape(1, 8, 10, 12)
    expected = encode_portable(scales, build_indexes(scales, table, float(bound)), thresholds, 1e-3)
    stats, indexes, side = _probe_encode_portable(probe, tmp_path, scales, table, bound, 1e-3)
    assert expected.side == side == b"\x00" and stats == [1, 0, 0]
    assert np.array_equal(indexes, build_indexes(scales, table, float(bound)).reshape(-1))


def test_side_streams_of_real_scales_are_written_as_python_does(tiny_bundle, openvino_codec, probe, kodak_crop,
                                                                tmp_path):
    """On the scales the model computes for Kodak crops, at margins up to one
    that allows 16 shifts: the C++ encoder picks the same K, block length and
    choices as dcae_deploy.runtime.portable (which ones follows this CPU's
    float path, so only that they are allowed is asserted), writes the same
    bytes and shifts the same indexes; the reader parses them alike, and the
    C++ decoder, on the encoder's scales, gets the encoder's indexes back."""
    from dcae_deploy.runtime.portable import SHIFT_COUNTS, decode_side_stream, encode_portable

    tables = openvino_codec.bundle.entropy
    table, bound = tables.gaussian_scale_table, tables.gaussian_scale_bound
    thresholds = openvino_codec.thresholds
    assert thresholds.largest_shift_count(float(np.float32(2e-3))) == 16
    for crop in (("kodim21", 80, 120, 300, 200), ("kodim05", 64, 96, 40, 90)):
        scales = openvino_codec.encode(kodak_crop(*crop)).scales
        unshifted = build_indexes(scales, table, float(bound))
        for margin in (1e-4, 8e-4, 2e-3):
            margin32 = float(np.float32(margin))
            expected = encode_portable(scales, unshifted, thresholds, margin32)
            case = (crop[0], margin)
            assert expected.shifts.count in SHIFT_COUNTS, case
            assert expected.shifts.count <= thresholds.largest_shift_count(margin32), case
            stats, indexes, side = _probe_encode_portable(probe, tmp_path, scales, table, bound, margin32, unshifted)
            assert stats == [expected.shifts.count, expected.shifts.block, expected.listed], case
            assert side == expected.side, case
            assert np.array_equal(indexes, expected.indexes.reshape(-1)), case
            done = _probe_parse(probe, tmp_path, side, scales.size)
            assert _assert_parsed_alike(done, tmp_path, lambda: decode_side_stream(side, scales.size))
            np.savez(tmp_path / "dec.npz", scales=scales, scale_table=table, scale_bound=bound)
            done = run(probe, "portable-decode", tmp_path / "dec.npz", repr(margin32), 4, tmp_path / "side.bin",
                       tmp_path / "dec.npy")
            assert done.returncode == 0, done.stderr
            assert np.array_equal(np.load(tmp_path / "dec.npy"), expected.indexes.reshape(-1)), case


def test_threshold_shift_side_streams_are_parsed_and_applied_alike(tiny_bundle, probe, tmp_path):
    """The side stream reader on damaged streams (same entries and shifts as
    the Python reader, or both refuse), and PortableDecoding: a decoder within
    half the margin of the encoder gets the encoder's shifted indexes, slice
    by slice, as the Python one; scales outside the margin, damaged streams,
    shift counts over 16 and more shifts than the margin allows are refused
    alike; a side stream without shifts reads as well."""
    from dcae_deploy.runtime.bundle import Bundle
    from dcae_deploy.runtime.portable import (NO_SHIFTS, PortableDecoding, Thresholds, ThresholdShifts,
                                              decode_side_stream, encode_portable, encode_side_stream, mark)

    tables = Bundle.open(tiny_bundle).entropy
    table, bound = tables.gaussian_scale_table, tables.gaussian_scale_bound
    thresholds = Thresholds.from_table(table, float(bound))
    rng = np.random.default_rng(17)
    margin = float(np.float32(1e-3))
    scales = _crowded_latent(rng, table, margin, (1, 16, 12, 16), spread=0.8)
    unshifted = build_indexes(scales, table, float(bound))
    encoded = encode_portable(scales, unshifted, thresholds, margin)
    side = encoded.side
    assert encoded.shifts.count == 16 and encoded.listed > 10
    assert np.any(encoded.indexes < unshifted) and np.any(encoded.indexes > unshifted)

    outcomes = {"same": 0, "refused": 0}
    for k, damaged in enumerate(mutations(side, 300, seed=21)):
        total = scales.size if k % 3 else None  # a third as inspect reads them
        done = _probe_parse(probe, tmp_path, damaged, total)
        parsed = _assert_parsed_alike(done, tmp_path, lambda: decode_side_stream(damaged, total))
        outcomes["same" if parsed else "refused"] += 1
    assert outcomes["refused"] > 100 and outcomes["same"] > 10, outcomes
    head = side[:9]
    refusals = {"shift count 2**5 is over 16": b"\x05" + side[1:], "shift blocks": head[:1] + bytes(4) + side[5:],
                "shift head": side[:7], "cannot hold": side[:12], "empty": b""}
    for words, data in refusals.items():
        done = _probe_parse(probe, tmp_path, data, scales.size)
        with pytest.raises(DcaeError):
            decode_side_stream(data, scales.size)
        assert_refused(done, "side stream", words)

    slices = 4
    slice_size = scales.size // slices

    def python_decode(decoder_scales, data, margin_):
        decoding = PortableDecoding(data, scales.size, thresholds, margin_)
        flat = decoder_scales.reshape(-1)
        out = []
        for i in range(slices):
            part = flat[i * slice_size:(i + 1) * slice_size]
            index = build_indexes(part, table, float(bound))
            decoding.apply(i * slice_size, part, index)
            out.append(index)
        return np.concatenate(out)

    def decode_alike(decoder_scales, data, margin_=margin):
        np.savez(tmp_path / "dec.npz", scales=decoder_scales, scale_table=table, scale_bound=bound)
        (tmp_path / "dec.bin").write_bytes(data)
        done = run(probe, "portable-decode", tmp_path / "dec.npz", repr(margin_), slices, tmp_path / "dec.bin",
                   tmp_path / "dec.npy")
        try:
            expected = python_decode(decoder_scales, data, margin_)
        except DcaeError:
            assert_refused(done)
            return None
        assert done.returncode == 0, done.stderr
        assert np.array_equal(np.load(tmp_path / "dec.npy"), expected)
        return expected

    def drifted(spread):
        return (scales.astype(np.float64) * np.exp(rng.uniform(-spread, spread, scales.shape))).astype(np.float32)

    # Another setup's scales, within half the margin: the encoder's indexes.
    for _ in range(2):
        assert np.array_equal(decode_alike(drifted(0.4 * margin), side), encoded.indexes.reshape(-1))
    # Farther: refused (a listed element too far, or an unlisted one too near).
    assert decode_alike(drifted(3 * margin), side) is None
    # K = 8 is more than a margin of 0.01 allows with this table: a stream
    # that is sound but for that is refused.
    wide = float(np.float32(0.01))
    assert thresholds.largest_shift_count(wide) == 4
    wide_scales = _crowded_latent(rng, table, wide, scales.shape)
    wide_encoded = encode_portable(wide_scales, build_indexes(wide_scales, table, float(bound)), thresholds, wide)
    assert wide_encoded.shifts.count == 4
    assert np.array_equal(decode_alike(wide_scales, wide_encoded.side, wide), wide_encoded.indexes.reshape(-1))
    listed = decode_side_stream(wide_encoded.side, scales.size)
    as_8 = encode_side_stream(ThresholdShifts(8, listed.shifts.block, listed.shifts.choices), listed.positions,
                              listed.bits, scales.size)
    assert decode_alike(wide_scales, as_8, wide) is None
    # Damaged side streams: the same indexes or both refuse.
    decoded = sum(decode_alike(scales, damaged) is not None for damaged in mutations(side, 60, seed=23))
    assert decoded < 60
    # Without shifts: the listed elements alone give the unshifted indexes.
    no_shifts = encode_side_stream(NO_SHIFTS, *mark(scales, unshifted, thresholds, margin), scales.size)
    assert np.array_equal(decode_alike(drifted(0.4 * margin), no_shifts), unshifted.reshape(-1))


# ---- PNG --------------------------------------------------------------------------------------

_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_bytes(samples: np.ndarray, color_type: int, bit_depth: int, palette: bytes | None = None,
               transparency: bytes | None = None, interlaced: bool = False) -> bytes:
    """A PNG written from the spec (any colour type and bit depth, optionally
    Adam7-interlaced), so the loader sees forms Pillow does not write.
    `samples`: (H, W, channels) integers."""
    height, width, channels = samples.shape

    def rows(image):
        out = b""
        for row in image:
            if bit_depth == 16:
                data = row.astype(">u2").tobytes()
            elif bit_depth == 8:
                data = row.astype(np.uint8).tobytes()
            else:
                bits = "".join(format(int(v), f"0{bit_depth}b") for v in row.reshape(-1))
                bits += "0" * (-len(bits) % 8)
                data = bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))
            out += b"\0" + data
        return out

    if interlaced:
        raw = b"".join(rows(samples[y0::dy, x0::dx]) for x0, y0, dx, dy in _ADAM7
                       if samples[y0::dy, x0::dx].size)
    else:
        raw = rows(samples)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0,
                                                           int(interlaced)))
    if palette is not None:
        out += chunk(b"PLTE", palette)
    if transparency is not None:
        out += chunk(b"tRNS", transparency)
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _png_cases():
    rng = np.random.default_rng(5)
    h, w = 13, 11
    palette = rng.integers(0, 256, 3 * 16).astype(np.uint8).tobytes()
    cases = {}
    for depth in (1, 2, 4, 8, 16):
        cases[f"gray{depth}"] = (rng.integers(0, 1 << depth, (h, w, 1)), 0, depth, None, None)
    cases["gray8_trns"] = (rng.integers(0, 256, (h, w, 1)), 0, 8, None, b"\x00\x07")
    for depth in (8, 16):
        cases[f"gray_alpha{depth}"] = (rng.integers(0, 1 << depth, (h, w, 2)), 4, depth, None, None)
        cases[f"rgb{depth}"] = (rng.integers(0, 1 << depth, (h, w, 3)), 2, depth, None, None)
        cases[f"rgba{depth}"] = (rng.integers(0, 1 << depth, (h, w, 4)), 6, depth, None, None)
    for depth in (1, 2, 4, 8):
        cases[f"palette{depth}"] = (rng.integers(0, min(16, 1 << depth), (h, w, 1)), 3, depth, palette, None)
    cases["palette_trns"] = (rng.integers(0, 16, (h, w, 1)), 3, 8, palette, b"\x00\x80\xff")
    return cases


@pytest.mark.parametrize("interlaced", [False, True])
def test_png_loader_gives_the_python_loaders_pixels(probe, tmp_path, interlaced):
    for name, (samples, color_type, depth, palette, trns) in _png_cases().items():
        path = tmp_path / f"{name}.png"
        path.write_bytes(_png_bytes(samples, color_type, depth, palette, trns, interlaced))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            expected = load_image(path)
        done = run(probe, "png", path, tmp_path / f"{name}.npy")
        assert done.returncode == 0, (name, done.stderr)
        assert np.array_equal(np.load(tmp_path / f"{name}.npy"), expected), name
        python_warned = any("alpha" in str(w.message) for w in caught)
        assert ("alpha channel" in done.stderr) == python_warned, (name, done.stderr)


def test_npz_reader_reads_stored_and_deflated_archives(probe, tmp_path):
    arrays = {"a": np.arange(12, dtype=np.int64).reshape(3, 4), "b": np.float32(2.5), "c": np.ones(3, np.uint8)}
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, **arrays)
        done = run(probe, "npz", path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["a i8 3 4", "b f4", "c u1 3"]
    (tmp_path / "cut.npz").write_bytes((tmp_path / "savez.npz").read_bytes()[:-30])
    assert_refused(run(probe, "npz", tmp_path / "cut.npz"))


# ---- the codec --------------------------------------------------------------------------------

def _write_png(path: Path, pixels: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(pixels).save(path)
    return path


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_round_trip_is_exact_and_computes_the_python_openvino_backends_bits(host, tiny_bundle, openvino_codec,
                                                                            kodak_crop, tmp_path):
    """dcae-host and the Python runtime on the openvino backend compile the
    graphs the same way: the same latents, byte-identical portable files
    (side stream, threshold shifts and the indexes they shift included), the
    same decoded image."""
    from dcae_deploy.runtime.portable import decode_side_stream

    pixels = kodak_crop("kodim21", 80, 120, top=300, left=200)
    image = _write_png(tmp_path / "in.png", pixels)
    done = run(host, "compress", "-b", tiny_bundle, image, "-o", tmp_path / "x.dcae", "--threads", 2,
               "--save-latents", tmp_path / "enc", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    done = run(host, "decompress", "-b", tiny_bundle, tmp_path / "x.dcae", "-o", tmp_path / "x.png", "--threads", 2,
               "--save-latents", tmp_path / "dec")
    assert done.returncode == 0, done.stderr

    # The host's own round trip: the decoder read the encoder's symbols and
    # computed its y_hat bit for bit.
    for name in ("symbols", "y_hat"):
        assert np.array_equal(np.load(tmp_path / "enc" / f"in.{name}.npy"), np.load(tmp_path / "dec" / f"x.{name}.npy"))

    encoded = openvino_codec.encode(pixels)
    assert (tmp_path / "x.dcae").read_bytes() == encoded.data
    assert encoded.data[4:8] == bytes([3, 0b10]) + struct.pack("<H", 4096)  # format 3, portable, gain 1
    side = decode_side_stream(encoded.side, encoded.symbols.size)
    assert (report["threshold_shifts"], report["shift_block"], report["marked"]) == (
        side.shifts.count, side.shifts.block if side.shifts.count > 1 else None, side.positions.size)
    # The symbols are coded with the indexes the shifts (if any) moved, in both.
    assert np.array_equal(np.load(tmp_path / "enc" / "in.indexes.npy"), encoded.indexes)
    assert np.array_equal(np.load(tmp_path / "enc" / "in.y_hat.npy"), encoded.y_hat)
    assert np.array_equal(_read_png(tmp_path / "x.png"), openvino_codec.decompress(encoded.data))


# (offset, struct code) of the header fields _rewritten replaces.
_FIELDS = {"version": (4, "B"), "flags": (5, "B"), "gain_code": (6, "H")}


def _rewritten(data: bytes, side: bytes | None = None, **fields) -> bytes:
    """A .dcae with header fields or its side stream replaced, lengths and CRC repaired."""
    head = bytearray(data[:60])
    z_length, y_length, side_length = struct.unpack_from("<III", head, 44)
    payload = data[64:64 + z_length + y_length] + (data[64 + z_length + y_length:] if side is None else side)
    for name, value in fields.items():
        struct.pack_into("<" + _FIELDS[name][1], head, _FIELDS[name][0], value)
    struct.pack_into("<I", head, 52, len(payload) - z_length - y_length)
    return bytes(head) + struct.pack("<I", zlib.crc32(payload, zlib.crc32(bytes(head)))) + payload


def test_files_inspect_and_are_refused_as_in_python(host, tiny_bundle, openvino_codec, kodak_crop, tmp_path):
    """`dcae-host inspect` reports the header and the side stream (format,
    gain, elements listed, shifts) as `dcae inspect` does, and refuses the
    same damaged files; `dcae-host decompress` refuses, in the same words as
    the Python decoder, files of an earlier format, unknown flag bits (bits 2
    and 3 included), a portable file without a side stream and more than 16
    shifts. Every gain code decodes: a file relabelled with another gain is
    refused by both decoders by its side stream, not by its gain."""
    from dcae_deploy.runtime.cli import describe
    from dcae_deploy.runtime.container import DcaeHeader, pack
    from dcae_deploy.runtime.portable import NO_SHIFTS, encode_side_stream, mark

    tables = openvino_codec.bundle.entropy
    pixels = kodak_crop("kodim21", 80, 120, top=300, left=200)
    encoded = openvino_codec.encode(pixels, margin=1e-3)
    header = unpack(encoded.data).header
    unshifted = build_indexes(encoded.scales, tables.gaussian_scale_table, float(tables.gaussian_scale_bound))
    listed = encode_side_stream(NO_SHIFTS, *mark(encoded.scales, unshifted, openvino_codec.thresholds, header.margin),
                                encoded.scales.size)
    own = pack(DcaeHeader(header.height, header.width, bytes(16)), encoded.z, encoded.y)  # not portable
    files = {"portable": encoded.data, "own": own,
             "format 2": _rewritten(encoded.data, version=2), "format 1": _rewritten(own, version=1),
             "format 4": _rewritten(encoded.data, version=4),
             "gain 2": _rewritten(encoded.data, gain_code=8192), "gain 1/4096": _rewritten(own, gain_code=1),
             "gain 0": _rewritten(encoded.data, gain_code=0),
             "flag bit 2": _rewritten(encoded.data, flags=0b110), "flag bit 3": _rewritten(encoded.data, flags=0b1010),
             "flag bits 2 and 3, not portable": _rewritten(own, flags=0b1100),
             "no side stream": _rewritten(encoded.data, side=b""),
             "side stream, not portable": _rewritten(own, side=b"\x00"),
             "more shifts than 16": _rewritten(encoded.data, side=b"\x05" + encoded.side[1:]),
             "no shifts": _rewritten(encoded.data, side=b"\x00"),
             "no shifts, listed": _rewritten(encoded.data, side=listed)}
    refusals = {"format 2": ".dcae format version 2 predates this decoder's format 3; re-encode the image",
                "format 1": ".dcae format version 1 predates this decoder's format 3; re-encode the image",
                "format 4": "version 4 is not supported", "gain 0": "gain_code 0",
                "flag bit 2": "unknown .dcae flag bits 0x04", "flag bit 3": "unknown .dcae flag bits 0x08",
                "flag bits 2 and 3, not portable": "unknown .dcae flag bits 0x0c",
                "no side stream": "portable file has no side stream",
                "side stream, not portable": "not portable", "more shifts than 16": "shift count 2**5 is over 16"}
    keys = ("version", "gain_code", "gain", "portable", "height", "width", "z_bytes", "y_bytes", "side_bytes",
            "side_marked", "threshold_shifts", "shift_block")
    described = set()
    for name, data in files.items():
        (tmp_path / "x.dcae").write_bytes(data)
        done = run(host, "inspect", tmp_path / "x.dcae")
        try:
            python = describe(data)
        except DcaeError as error:
            assert_refused(done, refusals[name])
            assert refusals[name] in str(error), (name, error)
            continue
        assert done.returncode == 0, (name, done.stderr)
        info = json.loads(done.stdout)
        assert {key: info[key] for key in keys} == {key: python[key] for key in keys}, name
        assert np.float32(info["margin"]) == np.float32(python["margin"]), name
        described.add(name)
    assert described == {"portable", "own", "gain 2", "gain 1/4096", "no shifts", "no shifts, listed"}
    # The relabelled file's scales times 2 miss the encoder's index
    # boundaries: the side stream's margin check catches it.
    refusals["gain 2"] = "margin"
    for name in ("format 2", "gain 2", "flag bit 3", "no side stream"):
        (tmp_path / "x.dcae").write_bytes(files[name])
        done = run(host, "decompress", "-b", tiny_bundle, tmp_path / "x.dcae", "-o", tmp_path / "x.png")
        with pytest.raises(DcaeError, match=re.escape(refusals[name])):
            openvino_codec.decompress(files[name])
        assert_refused(done, refusals[name])
        assert "gain" not in done.stderr
        assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_both_hosts_write_the_margin_recorded_for_the_model(host, tiny_bundle, tiny_model, kodak_crop, tmp_path):
    """The export recorded the model's margin (as the reference computes it)
    and checked that every setup here strays under half of it; both hosts'
    encoders write the bundle's margin by default, to the same bytes."""
    from dcae.margin import model_margin

    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    measured = manifest["portable"]["measurement"]
    assert {"torch", "torch-avx2", "onnxruntime", "openvino"} <= set(measured["setups"])
    assert manifest["portable"]["margin"] == model_margin(tiny_model)
    assert 0 < max(measured["vs_float64"].values()) < manifest["portable"]["margin"] / 2

    wide = tmp_path / "wide"
    shutil.copytree(tiny_bundle, wide)
    wide_margin = float(np.float32(3 * manifest["portable"]["margin"]))
    manifest["portable"]["margin"] = wide_margin
    (wide / "manifest.json").write_text(json.dumps(manifest))
    pixels = kodak_crop("kodim21", 80, 120, top=300, left=200)
    image = _write_png(tmp_path / "in.png", pixels)
    sides = {}
    for name, bundle in (("measured", tiny_bundle), ("wide", wide)):
        done = run(host, "compress", "-b", bundle, image, "-o", tmp_path / f"{name}.dcae", "--threads", 2, "--json")
        assert done.returncode == 0, done.stderr
        data = (tmp_path / f"{name}.dcae").read_bytes()
        assert data == Codec(bundle, backend="openvino", threads=2).encode(pixels).data
        header = unpack(data).header
        assert header.margin == np.float32(wide_margin if name == "wide" else manifest_margin(tiny_bundle))
        # With threshold shifts few elements stay listed: the side stream's
        # size, not the count, shows the wider margin.
        sides[name] = len(unpack(data).side)
    assert sides["wide"] > sides["measured"]


def manifest_margin(bundle: Path) -> float:
    return json.loads((bundle / "manifest.json").read_text())["portable"]["margin"]


def test_bf16_encoder_files_decode_exactly_on_the_f32_decoder(host, tiny_bundle, kodak_crop, tmp_path):
    """openvino-bf16 runs g_a, h_a and g_s in bf16 and the entropy graphs in
    f32: same numeric class, so f32 decodes its files symbol for symbol."""
    import openvino

    if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert_refused(run(host, "compress", "-b", tiny_bundle, _write_png(tmp_path / "in.png", kodak_crop("kodim05", 64, 64)),
                           "-o", tmp_path / "x.dcae", "--backend", "openvino-bf16"), "bf16")
        return
    image = _write_png(tmp_path / "in.png", kodak_crop("kodim05", 100, 70, top=40, left=90))
    done = run(host, "compress", "-b", tiny_bundle, image, "-o", tmp_path / "x.dcae", "--backend", "openvino-bf16",
               "--save-latents", tmp_path / "enc")
    assert done.returncode == 0, done.stderr
    done = run(host, "decompress", "-b", tiny_bundle, tmp_path / "x.dcae", "-o", tmp_path / "x.png",
               "--save-latents", tmp_path / "dec")
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.load(tmp_path / "enc" / "in.symbols.npy"), np.load(tmp_path / "dec" / "x.symbols.npy"))


def test_json_report_and_several_files_into_a_directory(host, tiny_bundle, kodak_crop, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("kodim01", "kodim02"):
        _write_png(images / f"{name}.png", kodak_crop(name, 48, 40))
    done = run(host, "compress", "-b", tiny_bundle, images, "-o", tmp_path / "coded", "--json")
    assert done.returncode == 0, done.stderr
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    assert [Path(r["output"]).name for r in reports] == ["kodim01.dcae", "kodim02.dcae"]
    for report in reports:
        assert report["bytes"] == (tmp_path / "coded" / Path(report["output"]).name).stat().st_size
        assert {"g_a", "h_a", "h_s", "slice_params_0", "y_coding", "total"} <= set(report["timings_ms"])
    done = run(host, "decompress", "-b", tiny_bundle, tmp_path / "coded", "-o", tmp_path / "decoded")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "decoded").iterdir()) == ["kodim01.png", "kodim02.png"]


# ---- bad input ------------------------------------------------------------------------------

def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_bad_files_and_images_are_one_line_errors_and_leave_no_output(host, tiny_bundle, kodak_crop, tmp_path):
    image = _write_png(tmp_path / "in.png", kodak_crop("kodim03", 40, 56))
    good = tmp_path / "good.dcae"
    assert run(host, "compress", "-b", tiny_bundle, image, "-o", good).returncode == 0
    data = good.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    bad_files = {
        "truncated": (data[:-5], "truncated"),
        "header only": (data[:40], "truncated"),
        "bit flip": (data[:100] + bytes([data[100] ^ 4]) + data[101:], "CRC"),
        "empty": (b"", "empty"),
        "png": (image.read_bytes(), "PNG image"),
        "version 9": (data[:4] + b"\x09" + data[5:], "version 9"),
        "text": (b"hello, this is not a codec file at all\n", "not a .dcae"),
    }
    for name, (content, words) in bad_files.items():
        path = tmp_path / f"{name}.dcae"
        path.write_bytes(content)
        assert_refused(run(host, "decompress", "-b", tiny_bundle, path, "-o", out / "x.png"), words)
    bad_images = {
        "jpeg.png": (b"\xff\xd8\xff\xe0" + bytes(100), "JPEG"),
        "text.png": (b"just text", "not a PNG"),
        "cut.png": (image.read_bytes()[:60], "cannot decode PNG"),
        "coded.png": (data, ".dcae file"),
    }
    for name, (content, words) in bad_images.items():
        (tmp_path / name).write_bytes(content)
        assert_refused(run(host, "compress", "-b", tiny_bundle, tmp_path / name, "-o", out / "x.dcae"), words)
    assert_refused(run(host, "compress", "-b", tiny_bundle, tmp_path / "missing.png", "-o", out / "x.dcae"),
                   "no such file")
    assert _leftovers(out) == []


def test_missing_or_damaged_bundles_are_one_line_errors(host, tiny_bundle, kodak_crop, tmp_path):
    image = _write_png(tmp_path / "in.png", kodak_crop("kodim04", 32, 32))
    out = tmp_path / "out"
    out.mkdir()

    def damaged(name, change):
        copy = tmp_path / name
        shutil.copytree(tiny_bundle, copy)
        change(copy)
        return copy

    def rewrite_manifest(bundle, edit):
        manifest = json.loads((bundle / "manifest.json").read_text())
        edit(manifest)
        (bundle / "manifest.json").write_text(json.dumps(manifest))

    bundles = {
        "missing": (tmp_path / "nowhere", "not a directory"),
        "no manifest": (damaged("b1", lambda b: (b / "manifest.json").unlink()), "manifest.json is missing"),
        "bad json": (damaged("b2", lambda b: (b / "manifest.json").write_text("{not json")), "not valid JSON"),
        "altered graph": (damaged("b3", lambda b: (b / "h_s.onnx").write_bytes(b"junk")), "altered"),
        "missing graph": (damaged("b4", lambda b: (b / "slice_lrp_0.onnx").unlink()), "missing"),
        "altered tables": (damaged("b5", lambda b: (b / "entropy.npz").write_bytes(b"PK")), "altered"),
        "foreign file name": (damaged("b6", lambda b: rewrite_manifest(
            b, lambda m: m["graphs"][0].update(file="../g_a.onnx"))), "not a file in the bundle"),
        "wrong fingerprint": (damaged("b7", lambda b: rewrite_manifest(
            b, lambda m: m.update(entropy_fingerprint="0" * 64))), "fingerprint"),
        "absurd margin": (damaged("b8", lambda b: rewrite_manifest(
            b, lambda m: m.update(portable={"margin": 0.5}))), "portable margin"),
        "bad bytes_per_pixel": (damaged("b9", lambda b: rewrite_manifest(
            b, lambda m: m.update(bytes_per_pixel={"g_a": -1, "g_s": 100}))), "bytes_per_pixel"),
        "bytes_per_pixel of h_s": (damaged("b10", lambda b: rewrite_manifest(
            b, lambda m: m.update(bytes_per_pixel={"h_s": 5}))), "bytes_per_pixel"),
    }
    for name, (bundle, words) in bundles.items():
        assert_refused(run(host, "compress", "-b", bundle, image, "-o", out / "x.dcae"), words)
    assert _leftovers(out) == []


@pytest.mark.slow
@pytest.mark.parametrize("weight_bits", [7, 8, None])
def test_both_hosts_warn_alike_of_int8_weights_this_cpu_saturates(host, tiny_bundle, kodak_crop, tmp_path, weight_bits):
    """OpenVINO's int8 kernels saturate on 8-bit weights (the TensorRT form, and
    bundles older than the int8_weight_bits field) where the CPU has no VNNI
    (13 dB worse on an AMD EPYC). Both hosts warn, in the same words, exactly
    where dcae_deploy.runtime.backends says this CPU saturates, and never for 7-bit
    weights. Whether they warn depends on the manifest and the CPU alone, so
    the tiny bundle's manifest is relabelled int8."""
    from dcae_deploy.runtime.backends import int8_products_saturate_here

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    next(g for g in manifest["graphs"] if g["name"] == "g_s")["precision"] = "int8"
    manifest["int8_weight_bits"] = weight_bits
    if weight_bits is None:
        del manifest["int8_weight_bits"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Codec(bundle, backend="openvino", threads=1)
    python_warnings = [str(w.message) for w in caught]
    image = _write_png(tmp_path / "in.png", kodak_crop("kodim04", 32, 32))
    done = run(host, "compress", "-b", bundle, image, "-o", tmp_path / "x.dcae")
    assert done.returncode == 0, done.stderr
    host_warnings = [line.removeprefix("dcae-host: warning: ") for line in done.stderr.splitlines()]
    expected = 1 if weight_bits != 7 and int8_products_saturate_here() else 0
    assert len(python_warnings) == expected and host_warnings == python_warnings
    if expected:
        assert "8-bit weights" in python_warnings[0] and "OpenVINO" in python_warnings[0]


def test_command_line_mistakes_exit_2_and_help_exits_0(host):
    done = run(host, "--help")
    assert done.returncode == 0 and "dcae-host compress" in done.stdout
    assert run(host, "compress", "--help").returncode == 0
    for args, words in ((["compress", "x.png", "-o", "y"], "-b BUNDLE"), (["squash"], "unknown command"),
                        (["decompress", "-b", "b", "x", "-o", "y", "--margin", "1"], "unknown option"),
                        (["compress", "-b", "b", "x", "-o", "y", "--threads", "0"], "--threads")):
        assert_refused(run(host, *args), words, status=2)


@pytest.mark.slow
def test_fuzzed_files_through_dcae_host_decompress(host, tiny_bundle, openvino_codec, kodak_crop, tmp_path):
    """2900 damaged files in one `dcae-host decompress` run: the corpus of
    tests/test_runtime.py's fuzz test (damaged .dcae files, damaged upstream
    .bin files, z and y streams damaged under a sound header and CRC, which
    reach the entropy decoder) and damaged side streams under a sound CRC.
    Each is refused on one line or decoded, with no crash, hang or file left
    behind, and exactly as the Python runtime on the same backend decides:
    the same files refused, the same images decoded."""
    from dcae_deploy.runtime.container import pack_bin

    pixels = kodak_crop("kodim09", 64, 64, top=200, left=200)
    # At this margin every encoder shifts thresholds or lists elements: the
    # side stream is there to be damaged.
    data = openvino_codec.encode(pixels, margin=1e-3).data
    parsed = unpack(data)
    z, y, side = parsed.z, parsed.y, parsed.side
    assert len(side) > 5

    def repack(z_stream: bytes, y_stream: bytes, side_stream: bytes) -> bytes:
        head = bytearray(data[:60])
        struct.pack_into("<III", head, 44, len(z_stream), len(y_stream), len(side_stream))
        payload = z_stream + y_stream + side_stream
        return bytes(head) + struct.pack("<I", zlib.crc32(payload, zlib.crc32(bytes(head)))) + payload

    def word_aligned(stream: bytes) -> bytes:
        stream = stream[: len(stream) - len(stream) % 4]
        return stream if len(stream) >= 8 else stream + bytes(8 - len(stream))

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    files = {}
    sets = {"dcae": mutations(data, 1500, seed=1, fields=DCAE_FIELDS),
            "bin": mutations(pack_bin(64, 64, y, z), 500, seed=2),
            "y": (repack(z, word_aligned(m), side) for m in mutations(y, 400, seed=3)),
            "z": (repack(word_aligned(m), y, side) for m in mutations(z, 200, seed=4)),
            "side": (repack(z, y, m) for m in mutations(side, 300, seed=5))}
    for kind, mutants in sets.items():
        for i, mutant in enumerate(mutants):
            path = corpus / f"{kind}{i:04d}{'.bin' if kind == 'bin' else '.dcae'}"
            path.write_bytes(mutant)
            files[path.stem] = mutant
    assert len(files) == 2900

    out = tmp_path / "out"
    done = run(host, "decompress", "-b", tiny_bundle, corpus, "-o", out, "--threads", 2, timeout=1200)
    assert done.returncode == 1, done.stderr[-2000:]  # some failed, none crashed
    refused = {}
    for line in done.stderr.splitlines():
        if line.startswith("dcae-host: warning: "):
            continue  # a decoded .bin's warning
        assert line.startswith("dcae-host: error: "), line
        refused[Path(line[len("dcae-host: error: "):].split(": ", 1)[0]).stem] = line
    decoded = {p.stem for p in out.iterdir()}
    assert sorted(p.suffix for p in out.iterdir()) == [".png"] * len(decoded)  # no temporary files left
    assert not (decoded & set(refused)) and decoded | set(refused) == set(files)

    disagreements = []
    python_decoded = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the .bin warning
        for name, mutant in files.items():
            try:
                python_pixels = openvino_codec.decompress(mutant)
            except DcaeError:
                if name not in refused:
                    disagreements.append(f"{name}: Python refuses, dcae-host decodes")
                continue
            python_decoded += 1
            if name in refused:
                disagreements.append(f"{name}: Python decodes, dcae-host refuses: {refused[name]}")
            elif not np.array_equal(_read_png(out / f"{name}.png"), python_pixels):
                disagreements.append(f"{name}: other pixels")
    assert not disagreements, "\n".join(disagreements[:20])
    # No damaged .dcae decodes (the CRC covers everything; a mutation may undo
    # itself), and damaged streams under a sound CRC are caught.
    assert all(files[n] == data for n in decoded if n.startswith("dcae"))
    assert sum(1 for n in decoded if n.startswith(("y", "z", "side"))) <= 12
    print(f"fuzz: {len(files)} files, {len(refused)} refused, {len(decoded)} decoded "
          f"({python_decoded} by the Python runtime)")


# ---- interoperability with the Python runtime and the reference ---------------------------------

INTEROP_CROPS = {"kodim03_197x253": ("kodim03", 197, 253, 40, 300), "kodim04_1x1": ("kodim04", 1, 1, 300, 300),
                 "kodim19_300x140": ("kodim19", 300, 140, 200, 100)}


@pytest.fixture(scope="module")
def interop_images(kodak_crop, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("interop_images")
    return {name: _write_png(folder / f"{name}.png", kodak_crop(*crop)) for name, crop in INTEROP_CROPS.items()}


# The model's margin (computed on this machine's kernels, recorded at export), and a
# wider one with which many elements lie near the index boundaries, so that
# every encoder has to shift the thresholds or list elements. Which shifts an
# encoder picks follows the CPU's float path (K = 16 on an AMD EPYC, 8 on an
# Intel Xeon with AMX at the model's margin): only allowed Ks are asserted.
INTEROP_MARGINS = ["model", 1e-3]


def _assert_allowed_shifts(counts: list[int], margins: list[float], codec: Codec) -> None:
    from dcae_deploy.runtime.portable import SHIFT_COUNTS

    for count, margin in zip(counts, margins):
        assert count in SHIFT_COUNTS and count <= codec.thresholds.largest_shift_count(margin), (count, margin)


@pytest.mark.slow
@pytest.mark.parametrize("margin", INTEROP_MARGINS)
def test_python_runtime_files_decode_in_the_host_to_the_same_symbols(host, tiny_bundle, interop_images, tmp_path,
                                                                     margin):
    """Portable files written by the Python runtime on onnxruntime decode in
    dcae-host (OpenVINO) to the encoder's symbols exactly, and to an image
    within one level of the Python decoder's."""
    from dcae_deploy.runtime.portable import decode_side_stream

    codec = Codec(tiny_bundle, backend="onnxruntime", threads=2)
    coded = tmp_path / "coded"
    coded.mkdir()
    encoded = {}
    counts, margins = [], []
    for name, image in interop_images.items():
        encoded[name] = codec.encode(image, margin)
        header = unpack(encoded[name].data).header
        assert header.portable and encoded[name].data[4:6] == bytes([3, 0b10])
        counts.append(decode_side_stream(encoded[name].side, encoded[name].symbols.size).shifts.count)
        margins.append(header.margin)
        (coded / f"{name}.dcae").write_bytes(encoded[name].data)
    _assert_allowed_shifts(counts, margins, codec)
    if margin != "model":  # threshold shifts or listed elements
        assert sum(len(e.side) > 1 for e in encoded.values()) >= 2
    done = run(host, "decompress", "-b", tiny_bundle, coded, "-o", tmp_path / "decoded", "--save-latents",
               tmp_path / "latents", "--threads", 2)
    assert done.returncode == 0, done.stderr
    for name, result in encoded.items():
        host_symbols = np.load(tmp_path / "latents" / f"{name}.symbols.npy")
        assert np.array_equal(host_symbols, result.symbols), name
        python_pixels = codec.decompress(result.data)
        host_pixels = _read_png(tmp_path / "decoded" / f"{name}.png")
        assert np.abs(host_pixels.astype(int) - python_pixels).max() <= 1, name


@pytest.mark.slow
@pytest.mark.parametrize("margin", INTEROP_MARGINS)
def test_host_files_decode_in_the_python_runtime_and_the_reference(host, tiny_bundle, tiny_model, interop_images,
                                                                   tmp_path, margin):
    """dcae-host's portable files decode in the Python runtime (onnxruntime)
    and in the PyTorch reference to the host encoder's symbols, and to images
    within one level of the host's own decode."""
    from dcae.coding import decode_dcae

    margin_option = [] if margin == "model" else ["--margin", margin]
    done = run(host, "compress", "-b", tiny_bundle, *interop_images.values(), "-o", tmp_path / "coded",
               "--save-latents", tmp_path / "latents", "--json", "--threads", 2, *margin_option)
    assert done.returncode == 0, done.stderr
    counts = [json.loads(line)["threshold_shifts"] for line in done.stdout.splitlines()]
    done = run(host, "decompress", "-b", tiny_bundle, tmp_path / "coded", "-o", tmp_path / "decoded", "--threads", 2)
    assert done.returncode == 0, done.stderr
    codec = Codec(tiny_bundle, backend="onnxruntime", threads=2)
    files = {name: (tmp_path / "coded" / f"{name}.dcae").read_bytes() for name in interop_images}
    _assert_allowed_shifts(counts, [unpack(data).header.margin for data in files.values()], codec)
    if margin != "model":  # threshold shifts or listed elements
        assert sum(len(unpack(data).side) > 1 for data in files.values()) >= 2
    for name, data in files.items():
        header = unpack(data).header
        assert header.portable and data[4:6] == bytes([3, 0b10])
        if margin != "model":
            assert header.margin == np.float32(margin)
        symbols = np.load(tmp_path / "latents" / f"{name}.symbols.npy").reshape(-1)
        host_pixels = _read_png(tmp_path / "decoded" / f"{name}.png")
        python = codec.decode(data)
        reference_pixels, reference_symbols = decode_dcae(tiny_model, data)
        assert np.array_equal(python.symbols, symbols), name
        assert np.array_equal(np.asarray(reference_symbols).reshape(-1), symbols), name
        assert np.abs(python.x.astype(int) - host_pixels).max() <= 1, name
        assert np.abs(np.asarray(reference_pixels).astype(int) - host_pixels).max() <= 1, name


@pytest.mark.slow
def test_files_for_one_setup_decode_only_there(host, tiny_bundle, openvino_codec, kodak_crop, tmp_path):
    """A file that is not portable decodes only on its own setup: dcae-host
    reads the Python openvino backend's, refuses onnxruntime's by fingerprint
    in one line, and tries it when forced."""
    pixels = kodak_crop("kodim07", 60, 90, top=100, left=100)
    own = openvino_codec.encode(pixels, margin=None)
    assert not unpack(own.data).header.portable
    onnxruntime_file = Codec(tiny_bundle, backend="onnxruntime", threads=2).compress(pixels, margin=None)
    expected = openvino_codec.decode_streams(own.y, own.z, *pixels.shape[:2]).x
    for name, data in (("own", own.data), ("onnxruntime", onnxruntime_file)):
        (tmp_path / f"{name}.dcae").write_bytes(data)
    # dcae-host writes the same file for its own setup.
    done = run(host, "compress", "-b", tiny_bundle, _write_png(tmp_path / "in.png", pixels), "-o",
               tmp_path / "host.dcae", "--not-portable")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "host.dcae").read_bytes() == own.data
    done = run(host, "decompress", "-b", tiny_bundle, tmp_path / "own.dcae", "-o", tmp_path / "own.png")
    assert done.returncode == 0, done.stderr
    assert np.array_equal(_read_png(tmp_path / "own.png"), expected)
    assert_refused(run(host, "decompress", "-b", tiny_bundle, tmp_path / "onnxruntime.dcae", "-o", tmp_path / "o.png"),
                   "another bundle, backend or precision")
    assert not (tmp_path / "o.png").exists()
    forced = run(host, "decompress", "-b", tiny_bundle, tmp_path / "onnxruntime.dcae", "-o", tmp_path / "o.png",
                 "--force")
    # Forced: a desync caught at the end of the stream, or a decode with a warning.
    assert (forced.returncode == 1 and "sync" in forced.stderr) or "forced" in forced.stderr, forced.stderr


def test_a_portable_file_of_another_model_is_refused(host, tiny_bundle, kodak_crop, tmp_path):
    from dcae_deploy.runtime.bundle import Bundle

    pixels = kodak_crop("kodim08", 40, 40)
    data = bytearray(Codec(tiny_bundle, backend="onnxruntime", threads=1).compress(pixels))
    data[28] ^= 0xFF  # another entropy model's fingerprint, CRC repaired
    data[60:64] = struct.pack("<I", zlib.crc32(bytes(data[64:]), zlib.crc32(bytes(data[:60]))))
    (tmp_path / "other.dcae").write_bytes(bytes(data))
    assert Bundle.open(tiny_bundle).manifest.entropy_model_fingerprint
    assert_refused(run(host, "decompress", "-b", tiny_bundle, tmp_path / "other.dcae", "-o", tmp_path / "x.png"),
                   "another entropy model")


def test_dcae_bench_runs_the_host_as_a_setup(host, tiny_bundle, openvino_codec, kodak_crop):
    """dcae-bench's cpp-openvino setup codes in-process through the host's C
    interface (libdcae-host.so): the openvino backend's files and symbols,
    stage timings, and the runtime's error classes for bad files."""
    from dcae_deploy.bench.cli import plan_setups
    from dcae_deploy.bench.setups import bundle_infos, open_setup
    from dcae_deploy.runtime.errors import CorruptStreamError

    (setup,) = plan_setups(bundle_infos([str(tiny_bundle)]), ["cpp-openvino"], None)
    coder = open_setup(setup, 2)
    pixels = kodak_crop("kodim10", 70, 50)
    encoded = coder.encode(pixels)
    assert encoded.data == openvino_codec.encode(pixels).data
    assert {"g_a", "slice_params_0", "y_coding", "total"} <= set(coder.timings)
    decoded = coder.decode(encoded.data)
    assert np.array_equal(decoded.symbols, encoded.symbols)
    assert np.array_equal(decoded.x, openvino_codec.decompress(encoded.data))
    with pytest.raises(CorruptStreamError, match="truncated"):
        coder.decode(encoded.data[:-3])
    # dcae_read_symbols: the same symbols without g_s, the same refusals.
    read = coder.decode(encoded.data, synthesize=False)
    assert read.x is None and np.array_equal(read.symbols, encoded.symbols)
    assert "y_coding" in coder.timings and "g_s" not in coder.timings
    with pytest.raises(CorruptStreamError, match="truncated"):
        coder.decode(encoded.data[:-3], synthesize=False)


# ---- tiled image transforms (--memory-limit) ------------------------------------------------------

def _plan_record(plan) -> dict:
    """A TilePlan as dcae-probe tile-plan prints it."""
    return {"tile": list(plan.tile), "rows": [[s.origin, s.start, s.end] for s in plan.rows],
            "cols": [[s.origin, s.start, s.end] for s in plan.cols]}


def _probe_plans(probe, source, queries: list[str]) -> list[dict]:
    done = subprocess.run([str(probe), "tile-plan", str(source)], input="\n".join(queries) + "\n",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answers) == len(queries)
    return answers


def test_host_tile_plans_are_the_python_planners(probe, tiny_bundle, monkeypatch):
    """The host's planner gives the Python runtime's plans: the same tile
    shape, origins and interiors, or the same refusal in the same words, for
    the bundle's g_a and g_s over a grid of latent sizes and memory limits
    (from under the smallest tile to the whole image) with the process
    holding nothing or 300M, and for plan_for_budget itself over random
    bytes per pixel, halos and periods."""
    from dcae_deploy.runtime import tiling
    from dcae_deploy.runtime.bundle import Bundle
    from dcae_deploy.runtime.tiling import ImageTransforms, MemoryBudgetError, plan_for_budget

    bundle = Bundle.open(tiny_bundle)
    per_pixel = bundle.manifest.bytes_per_pixel
    assert set(per_pixel) == {"g_a", "g_s"}
    rng = np.random.default_rng(29)
    sides = (16, 24, 32, 40, 48, 64, 96, 136, 256, 512)
    queries, expected = [], []
    for held in (0, (300 << 20) + 12345):
        # What the Python process holds, as the probe is told it.
        monkeypatch.setattr(tiling, "resident_memory", lambda: held)
        for graph in ("g_a", "g_s"):
            for h in sides:
                for w in sides:
                    whole = per_pixel[graph] * h * w * 256
                    limits = {1, whole, whole - 1, *np.geomspace(whole / 40, whole, 6).astype(int).tolist()}
                    for limit in sorted(limit + held for limit in limits):
                        try:
                            answer = _plan_record(ImageTransforms(None, bundle, limit).plan(graph, h, w))
                        except MemoryBudgetError as refused:
                            answer = {"error": str(refused)}
                            # the smallest limit that works gives the smallest tiles
                            needed = refused.needed
                            queries.append(f"{graph} {h} {w} {needed} {held}")
                            expected.append(_plan_record(ImageTransforms(None, bundle, needed).plan(graph, h, w)))
                        queries.append(f"{graph} {h} {w} {limit} {held}")
                        expected.append(answer)
    monkeypatch.undo()
    # 0: half the memory available, which a small image fits whole.
    queries.append("g_a 16 24 0")
    expected.append(_plan_record(ImageTransforms(None, bundle, None).plan("g_a", 16, 24)))
    answers = _probe_plans(probe, tiny_bundle, queries)
    tiled = sum(len(e.get("rows", ())) * len(e.get("cols", ())) > 1 for e in expected)
    refused = sum("error" in e for e in expected)
    assert tiled > 600 and refused > 200, (tiled, refused)
    assert any("with 301M held by the process already" in e.get("error", "") for e in expected)
    mismatches = [(q, a, e) for q, a, e in zip(queries, answers, expected) if a != e]
    assert not mismatches, mismatches[:5]

    queries, expected = [], []
    for _ in range(3000):
        period = int(rng.choice([2, 4, 8]))
        h, w = (int(v) for v in rng.choice(sides, 2))
        halo = int(rng.integers(0, 13))
        bpp = int(rng.choice([1, 169, 1120, int(rng.integers(2, 5000))]))
        io = float(rng.choice([0.0, 4 * (3 + 40 / 256), 4 * (3 + 320 / 256), rng.uniform(0, 100)]))
        budget = int(np.exp(rng.uniform(np.log(bpp * h * w * 256 / 50), np.log(bpp * h * w * 256 * 1.2))))
        try:
            answer = _plan_record(plan_for_budget(h, w, bpp, io, budget, halo, period))
        except MemoryBudgetError as refused:
            answer = {"needed": refused.needed}
        queries.append(f"{h} {w} {bpp} {io!r} {budget} {halo} {period}")
        expected.append(answer)
    answers = _probe_plans(probe, "-", queries)
    mismatches = [(q, a, e) for q, a, e in zip(queries, answers, expected) if a != e]
    assert not mismatches, mismatches[:5]
    outcomes = [sum("needed" in e for e in expected),
                sum(len(e.get("rows", ())) * len(e.get("cols", ())) > 1 for e in expected)]
    assert outcomes[0] > 100 and outcomes[1] > 1000, outcomes


def _smallest_host_limit(host, tiny_bundle, command: str, source, target) -> int:
    """The smallest --memory-limit the host names for `command` on `source`
    (what it holds, and the smallest tile)."""
    from dcae_deploy.runtime.memory import parse_size

    line = assert_refused(run(host, command, "-b", tiny_bundle, source, "-o", target, "--memory-limit", "1M"),
                          "held by the process already", "needs at least")
    return parse_size(re.search(r"needs at least (\S+)$", line).group(1))


@pytest.mark.slow
def test_tiled_host_codes_as_the_python_runtime_tiles(host, tiny_bundle, tmp_path):
    """dcae-host with a memory limit that forces tiles (a little over the
    smallest it names): its file is the Python runtime's on the openvino
    backend at the plan the host reports byte for byte (the same graphs on
    the same tiles; the plan a limit gives depends on what each process
    holds, so the Python side runs at the host's tile shape), it decodes in
    the Python runtime (onnxruntime, whole) to the host encoder's symbols,
    and its tiled decode is within a level of its whole-image decode."""
    from dcae_deploy.runtime.bundle import Bundle
    from tests.conftest import DATA

    image = DATA / "kodak" / "kodim23.png"  # latent 32 x 48
    # From the smallest tile (20 x 20) to about 24 x 24, never the whole latent.
    room = int(max(Bundle.open(tiny_bundle).manifest.bytes_per_pixel.values()) * (24 * 24 - 20 * 20) * 256)
    limit = _smallest_host_limit(host, tiny_bundle, "compress", image, tmp_path / "x.dcae") + room
    done = run(host, "compress", "-b", tiny_bundle, image, "-o", tmp_path / "tiled.dcae", "--json",
               "--save-latents", tmp_path / "enc", "--memory-limit", limit, "--threads", 2)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["tiles"] >= 4 and max(report["tile"]) < 32, report
    data = (tmp_path / "tiled.dcae").read_bytes()

    python = Codec(tiny_bundle, backend="openvino", threads=2)
    python.transforms.tile = tuple(report["tile"])
    assert python.encode(image).data == data
    assert python.transforms.last_plan["g_a"].count == report["tiles"]
    decoded = Codec(tiny_bundle, backend="onnxruntime", threads=2, memory_limit=1 << 40).decode(data)
    assert np.array_equal(decoded.symbols, np.load(tmp_path / "enc" / "kodim23.symbols.npy").reshape(-1))

    limit = _smallest_host_limit(host, tiny_bundle, "decompress", tmp_path / "tiled.dcae", tmp_path / "x.png") + room
    pixels = {}
    for name, options in (("tiled", ["--memory-limit", limit, "--threads", 2]),
                          ("whole", ["--memory-limit", "1T", "--threads", 2])):
        done = run(host, "decompress", "-b", tiny_bundle, tmp_path / "tiled.dcae", "-o", tmp_path / f"{name}.png",
                   "--json", *options)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["tiles"] >= 4 if name == "tiled" else report["tiles"] == 1, report
        pixels[name] = _read_png(tmp_path / f"{name}.png").astype(np.int16)
    diff = np.abs(pixels["tiled"] - pixels["whole"])
    assert diff.mean() <= 0.01 and diff.max() <= 1, (diff.mean(), diff.max())

    # A bundle exported before bytes_per_pixel runs whole without a limit.
    older = tmp_path / "older"
    shutil.copytree(tiny_bundle, older)
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["bytes_per_pixel"]
    (older / "manifest.json").write_text(json.dumps(manifest))
    done = run(host, "decompress", "-b", older, tmp_path / "tiled.dcae", "-o", tmp_path / "older.png", "--json",
               "--threads", 2)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tiles"] == 1
    assert np.array_equal(_read_png(tmp_path / "older.png"), pixels["whole"])


def test_too_small_memory_limit_is_one_line_in_pythons_words_and_writes_nothing(host, tiny_bundle, kodak_crop,
                                                                                 tmp_path, monkeypatch):
    """A limit under the smallest tile: one line naming the smallest limit
    that works, in the Python runtime's words (sizes parsed and printed as it
    does them), exit 1, nothing written, for both directions; the size
    syntax's mistakes are command-line errors (exit 2)."""
    from dcae_deploy.runtime.bundle import Bundle
    from dcae_deploy.runtime.memory import parse_size
    from dcae_deploy.runtime.tiling import ImageTransforms, MemoryBudgetError

    bundle = Bundle.open(tiny_bundle)
    image = _write_png(tmp_path / "in.png", kodak_crop("kodim12", 64, 300))  # padded 256 x 384: latent 16 x 24
    out = tmp_path / "out"
    out.mkdir()
    done = run(host, "compress", "-b", tiny_bundle, image, "-o", tmp_path / "in.dcae", "--memory-limit", "1T")
    assert done.returncode == 0, done.stderr

    def python_refusal(graph: str, limit: int, held: int, monkeypatch) -> MemoryBudgetError:
        from dcae_deploy.runtime import tiling

        monkeypatch.setattr(tiling, "resident_memory", lambda: held)
        with pytest.raises(MemoryBudgetError) as refused:
            ImageTransforms(None, bundle, limit).plan(graph, 16, 24)
        monkeypatch.undo()
        return refused.value

    # What the host holds is its own (sizes printed rounded up): its line is
    # Python's with the host's two sizes, and the smallest limit it names is
    # what it holds plus the smallest tile (Python's, holding nothing).
    held_size = re.compile(r", with (\S+) held by the process already: it needs at least (\S+)$")
    for text in ("1M", " 1.5m ", "3k", "1048576", "64KB", "2.25MiB", "7", "0.01G"):
        for command, source, graph in (("compress", image, "g_a"), ("decompress", tmp_path / "in.dcae", "g_s")):
            target = out / ("x.dcae" if command == "compress" else "x.png")
            done = run(host, command, "-b", tiny_bundle, source, "-o", target, "--memory-limit", text)
            line = assert_refused(done, "needs at least")
            held, needed = held_size.search(line).groups()
            refused = python_refusal(graph, parse_size(text), parse_size(held), monkeypatch)
            assert line == f"dcae-host: error: {source}: {held_size.sub('', str(refused))}" \
                           f", with {held} held by the process already: it needs at least {needed}", line
            # (refused before the input exists: it counts beside the tile then)
            alone = python_refusal(graph, parse_size(text), 0, monkeypatch).needed
            assert parse_size(needed) - parse_size(held) >= alone - (1 << 20), line
    for text in ("lots", "0", "-2G", "0.1", "1e9", "2 G B", ""):
        for command, source in (("compress", image), ("decompress", tmp_path / "in.dcae")):
            assert_refused(run(host, command, "-b", tiny_bundle, source, "-o", out / "x", "--memory-limit", text),
                           "--memory-limit", status=2)
    # A bundle exported before bytes_per_pixel: the host cannot measure it,
    # so a limit is refused (the default runs whole, as before tiling).
    older = tmp_path / "older"
    shutil.copytree(tiny_bundle, older)
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["bytes_per_pixel"]
    (older / "manifest.json").write_text(json.dumps(manifest))
    assert_refused(run(host, "compress", "-b", older, image, "-o", out / "x.dcae", "--memory-limit", "1G"),
                   "no bytes_per_pixel for g_a")
    assert _leftovers(out) == []
    help_text = run(host, "--help").stdout
    assert "--memory-limit SIZE" in help_text and "half the memory available" in help_text


# ---- the quality knob (--quality, --target-bpp, --max-bytes) ----------------------------------------

QUALITY_CROP = ("kodim21", 80, 120, 300, 200)
QUALITIES = (20, 50, 85)


def test_gain_codes_of_qualities_are_the_python_rules(probe):
    """The host maps qualities onto rate levels as RateLevels.gain_code does,
    to the same code, for the untrained rule and random sets of levels with
    and without a reach past their ends, at the ends, around the reference
    and in between."""
    from dcae_deploy.runtime.quality import UNTRAINED_LEVELS, RateLevels

    rng = np.random.default_rng(31)
    levels = [UNTRAINED_LEVELS, RateLevels((0.3, 0.55, 1.0, 1.9, 3.7), 2), RateLevels((1e-4, 1.0, 20.0), 1),
              RateLevels((0.32, 0.43, 0.58, 0.75, 1.0, 1.35, 1.84, 2.5), 4)]
    while len(levels) < 24:
        gains = np.sort(np.exp(rng.uniform(-3, 3, int(rng.integers(3, 8)))))
        reach = float(rng.choice([0.0, 0.5, rng.uniform(0, 1)]))
        levels.append(RateLevels(tuple(gains.tolist()), int(rng.integers(1, gains.size - 1)), reach))
    qualities = [0, 100, 50, 49.999, 50.001, 12.5, 87.5, 1e-9, 99.99, *rng.uniform(0, 100, 60).tolist()]
    queries, expected = [], []
    for level in levels:
        for quality in qualities:
            queries.append(" ".join(map(repr, [level.reference, level.reach, *level.gains, float(quality)])))
            expected.append(level.gain_code(quality))
    # A quality alone: the host's own untrained levels.
    for quality in qualities:
        queries.append(repr(float(quality)))
        expected.append(UNTRAINED_LEVELS.gain_code(quality))
    done = subprocess.run([str(probe), "gain-codes"], input="\n".join(queries) + "\n", capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [int(code) for code in done.stdout.split()] == expected
    assert len(set(expected)) > 1000


def test_rate_control_tries_the_python_searchs_codes(probe, tmp_path):
    """search_gain_code in C++ on file sizes given per gain code (growing as
    a power of the gain, with noise, so not strictly at every code): the same
    tries in the same order, the same code kept, or the same one-line error,
    for caps and exact targets, in the untrained range and in others."""
    from dcae_deploy.runtime.quality import UNTRAINED_LEVELS, RateTarget, search_gain_code

    rng = np.random.default_rng(37)
    codes = np.arange(65536)
    outcomes = {"kept": 0, "refused": 0}
    longest = 0
    for trial in range(60):
        base = 1000 * (np.maximum(codes, 1) / 4096) ** rng.uniform(0.3, 1.5)
        noise = rng.normal(0, rng.uniform(0, 0.01), codes.size) * base + rng.integers(0, 3, codes.size)
        sizes = np.maximum(base + noise, 64).astype(np.int32)
        np.savez(tmp_path / "sizes.npz", sizes=sizes)
        low, high = (UNTRAINED_LEVELS.code_range() if trial % 2 else
                     (int(rng.integers(1, 3000)), int(rng.integers(5000, 65536))))
        max_bytes, exact = int(np.exp(rng.uniform(np.log(50), np.log(40000)))), trial % 3 == 0
        tries = []

        def size_at(code: int) -> int:
            tries.append(f"{code} {sizes[code]}")
            return int(sizes[code])

        done = run(probe, "rate-search", tmp_path / "sizes.npz", low, high, max_bytes, int(exact))
        try:
            kept = search_gain_code(size_at, RateTarget(max_bytes, exact, f"--max-bytes {max_bytes}"), (low, high))
        except DcaeError as error:
            line = assert_refused(done)
            assert line == f"dcae-probe: error: {error}" and done.stdout.splitlines() == tries, trial
            outcomes["refused"] += 1
        else:
            assert done.returncode == 0, done.stderr
            assert done.stdout.splitlines() == tries + [f"kept {kept.gain_code}"], trial
            outcomes["kept"] += 1
        longest = max(longest, len(tries))
    assert min(outcomes.values()) >= 10 and longest >= 4, (outcomes, longest)


@pytest.fixture(scope="module")
def quality_image(kodak_crop, tmp_path_factory) -> tuple[np.ndarray, Path]:
    pixels = kodak_crop(*QUALITY_CROP)
    return pixels, _write_png(tmp_path_factory.mktemp("quality") / "in.png", pixels)


@pytest.mark.slow
def test_host_files_at_qualities_are_the_python_openvino_backends(host, tiny_bundle, openvino_codec, quality_image,
                                                                  tmp_path):
    """At qualities 20, 50 and 85 dcae-host writes byte for byte the file of
    the Python runtime on the openvino backend at the same quality, with the
    gain code of the untrained rule in its header; quality 50 is the file
    without options (gain 1)."""
    pixels, image = quality_image
    sizes = []
    for quality in QUALITIES:
        target = tmp_path / f"q{quality}.dcae"
        done = run(host, "compress", "-b", tiny_bundle, image, "-o", target, "--quality", quality, "--threads", 2,
                   "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        data = target.read_bytes()
        assert data == openvino_codec.compress(pixels, quality=quality), quality
        gain_code = openvino_codec.rate_levels.gain_code(quality)
        assert unpack(data).header.gain_code == report["gain_code"] == gain_code, quality
        assert report["rate_tries"] is None
        sizes.append(len(data))
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    done = run(host, "compress", "-b", tiny_bundle, image, "-o", tmp_path / "default.dcae", "--threads", 2)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "default.dcae").read_bytes() == (tmp_path / "q50.dcae").read_bytes()
    assert unpack((tmp_path / "q50.dcae").read_bytes()).header.gain_code == 4096


@pytest.mark.slow
def test_files_at_qualities_decode_in_the_other_runtime(host, tiny_bundle, quality_image, tmp_path):
    """dcae-host's portable files at qualities 20, 50 and 85 decode in the
    Python runtime (onnxruntime) to the host encoder's symbols, and the
    Python runtime's files at those qualities decode in dcae-host to the
    Python encoder's symbols; the images agree within one level."""
    pixels, image = quality_image
    codec = Codec(tiny_bundle, backend="onnxruntime", threads=2)
    python_files = tmp_path / "python"
    python_files.mkdir()
    python_encoded = {}
    for quality in QUALITIES:
        done = run(host, "compress", "-b", tiny_bundle, image, "-o", tmp_path / f"host{quality}.dcae", "--quality",
                   quality, "--threads", 2, "--save-latents", tmp_path / f"enc{quality}")
        assert done.returncode == 0, done.stderr
        python_encoded[quality] = codec.encode(pixels, quality=quality)
        (python_files / f"py{quality}.dcae").write_bytes(python_encoded[quality].data)
    done = run(host, "decompress", "-b", tiny_bundle, python_files, "-o", tmp_path / "decoded", "--threads", 2,
               "--save-latents", tmp_path / "dec")
    assert done.returncode == 0, done.stderr
    for quality in QUALITIES:
        host_data = (tmp_path / f"host{quality}.dcae").read_bytes()
        header = unpack(host_data).header
        assert header.portable and header.gain_code == codec.rate_levels.gain_code(quality), quality
        decoded = codec.decode(host_data)
        host_symbols = np.load(tmp_path / f"enc{quality}" / "in.symbols.npy")
        assert np.array_equal(decoded.symbols.reshape(-1), host_symbols.reshape(-1)), quality

        encoded = python_encoded[quality]
        assert np.array_equal(np.load(tmp_path / "dec" / f"py{quality}.symbols.npy"), encoded.symbols), quality
        host_pixels = _read_png(tmp_path / "decoded" / f"py{quality}.png")
        assert np.abs(host_pixels.astype(int) - codec.decompress(encoded.data)).max() <= 1, quality


@pytest.mark.slow
def test_size_targets_give_the_python_runtimes_gain_code(host, tiny_bundle, openvino_codec, quality_image,
                                                         tmp_path):
    """--max-bytes and --target-bpp search the gain as Codec.encode(max_bytes=...,
    target_bpp=...) does on the openvino backend: the same tries, the same
    gain code and file; never over the cap, and within 3 % under a target."""
    pixels, image = quality_image
    height, width = pixels.shape[:2]
    smallest, largest = (len(openvino_codec.compress(pixels, quality=q)) for q in (0, 100))
    cases = [("--max-bytes", int(smallest + 0.3 * (largest - smallest))),
             ("--max-bytes", int(smallest + 0.8 * (largest - smallest))),
             ("--target-bpp", round(8 * (smallest + 0.5 * (largest - smallest)) / (height * width), 3))]
    for option, value in cases:
        keyword = {"--max-bytes": "max_bytes", "--target-bpp": "target_bpp"}[option]
        target = tmp_path / "x.dcae"
        done = run(host, "compress", "-b", tiny_bundle, image, "-o", target, option, value, "--threads", 2, "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        expected = openvino_codec.encode(pixels, **{keyword: value})
        search = openvino_codec.last_rate_search
        data = target.read_bytes()
        assert [tuple(t) for t in report["rate_tries"]] == search.tries and len(search.tries) >= 2, (option, value)
        assert unpack(data).header.gain_code == report["gain_code"] == search.gain_code, (option, value)
        assert data == expected.data, (option, value)
        limit = value if option == "--max-bytes" else int(value * height * width / 8)
        assert len(data) <= limit
        if option == "--target-bpp":
            assert len(data) >= 0.97 * limit
    # Without --json the line names the gain kept and the number of tries.
    done = run(host, "compress", "-b", tiny_bundle, image, "-o", tmp_path / "y.dcae", "--max-bytes", cases[0][1])
    assert done.returncode == 0 and re.search(r"bpp \(gain [0-9.]+, \d+ tries\)$", done.stdout.strip()), done.stdout


def test_rate_options_out_of_range_or_together_are_refused(host, tiny_bundle, kodak_crop, tmp_path):
    """Values out of range are usage errors in the Python runtime's words,
    and so is more than one of --quality, --target-bpp and --max-bytes."""
    image = _write_png(tmp_path / "in.png", kodak_crop("kodim05", 32, 48, top=100, left=100))
    out = tmp_path / "out"
    out.mkdir()
    usage = {("--quality", "101"): "quality must be from 0 to 100, got '101'",
             ("--quality", "-1"): "quality must be from 0 to 100, got '-1'",
             ("-q", "nan"): "quality must be from 0 to 100, got 'nan'",
             ("--quality", "best"): "quality must be a number from 0 to 100, got 'best'",
             ("--target-bpp", "0"): "target_bpp must be above 0 and under 64, got '0'",
             ("--target-bpp", "64"): "target_bpp must be above 0 and under 64, got '64'",
             ("--target-bpp", "x"): "target_bpp must be above 0 and under 64, got 'x'",
             ("--max-bytes", "0"): "must be at least 1, got 0",
             ("--max-bytes", "1.5"): "expected a whole number, got '1.5'",
             ("--quality", "50", "--max-bytes", "900"): "not --quality and --max-bytes",
             ("--target-bpp", "2", "-q", "50"): "not --target-bpp and --quality",
             ("--max-bytes", "900", "--target-bpp", "2"): "not --max-bytes and --target-bpp",
             ("-q", "20", "--quality", "30", "--max-bytes", "900"): "not --quality and --max-bytes"}
    for options, words in usage.items():
        assert_refused(run(host, "compress", "-b", tiny_bundle, image, "-o", out / "x.dcae", *options), words,
                       status=2)
    assert_refused(run(host, "decompress", "-b", tiny_bundle, image, "-o", out / "x.png", "--quality", "50"),
                   "unknown option", status=2)
    assert _leftovers(out) == []
    help_text = run(host, "--help").stdout
    assert all(option in help_text for option in ("--quality Q", "--target-bpp B", "--max-bytes N"))


@pytest.mark.slow
def test_sizes_out_of_reach_are_one_line_errors_and_write_nothing(host, tiny_bundle, kodak_crop, tmp_path):
    """A size the image cannot reach is a one-line error in Codec.encode's
    words, naming the nearest size it can (the smallest for a cap under it,
    the largest for a target over it), with exit 1 and no file written."""
    pixels = kodak_crop("kodim05", 32, 48, top=100, left=100)
    image = _write_png(tmp_path / "in.png", pixels)
    out = tmp_path / "out"
    out.mkdir()
    codec = Codec(tiny_bundle, backend="openvino", threads=1)
    for option, value, keyword in (("--max-bytes", 10, "max_bytes"), ("--target-bpp", 63, "target_bpp")):
        with pytest.raises(DcaeError) as python:
            codec.encode(pixels, **{keyword: value})
        done = run(host, "compress", "-b", tiny_bundle, image, "-o", out / "x.dcae", option, value)
        line = assert_refused(done, "out of reach")
        assert line == f"dcae-host: error: {image}: {python.value}", line
        assert ("smallest file this image codes to" if option == "--max-bytes" else "highest gain gives") in line
    assert _leftovers(out) == []


@pytest.mark.slow
def test_rate_levels_from_the_manifest(host, tiny_bundle, kodak_crop, tmp_path):
    """A bundle whose manifest records trained rate levels: the host maps
    qualities onto them as the Python runtime does (the same gain codes, the
    same files); levels that are not a set of levels are refused by both."""
    from dcae_deploy.runtime.errors import BundleError

    def with_levels(name: str, levels) -> Path:
        bundle = tmp_path / name
        shutil.copytree(tiny_bundle, bundle)
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["rate_levels"] = levels
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        return bundle

    trained = with_levels("trained", {"gains": [0.35, 0.6, 1.0, 1.7, 2.9], "reference": 2,
                                      "lambdas": [0.001, 0.002, 0.004, 0.008, 0.016]})
    pixels = kodak_crop("kodim05", 32, 48, top=100, left=100)
    image = _write_png(tmp_path / "in.png", pixels)
    codec = Codec(trained, backend="openvino", threads=1)
    assert codec.rate_levels.gain(0) < 0.35 and codec.rate_levels.gain(100) > 2.9  # half a level past the ends
    for quality in (0, 10, 70, 100):
        done = run(host, "compress", "-b", trained, image, "-o", tmp_path / "x.dcae", "-q", quality, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["gain_code"] == codec.rate_levels.gain_code(quality) != 4096
        assert (tmp_path / "x.dcae").read_bytes() == codec.compress(pixels, quality=quality)
    for name, levels in (("reference at the end", {"gains": [0.5, 1.0, 2.0], "reference": 2}),
                         ("decreasing", {"gains": [2.0, 1.0, 0.5], "reference": 1}),
                         ("no reference", {"gains": [0.5, 1.0, 2.0]}), ("not an object", [0.5, 1.0])):
        bundle = with_levels(name.replace(" ", "_"), levels)
        with pytest.raises(BundleError, match="rate_levels"):
            Codec(bundle, backend="openvino", threads=1)
        assert_refused(run(host, "compress", "-b", bundle, image, "-o", tmp_path / "y.dcae"), "rate_levels")
    assert not (tmp_path / "y.dcae").exists()


@pytest.mark.slow
def test_c_interface_codes_at_a_quality_and_a_size_target(host, tiny_bundle, openvino_codec, kodak_crop):
    """dcae_encode_rate in libdcae-host.so: the openvino backend's file at a
    quality or a size target, its gain code, and refusals with the runtime's
    error kind and words."""
    import ctypes

    lib = ctypes.CDLL(str(BUILD / "libdcae-host.so"))
    lib.dcae_open.restype = ctypes.c_void_p
    lib.dcae_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    lib.dcae_close.argtypes = [ctypes.c_void_p]
    lib.dcae_free.argtypes = [ctypes.c_void_p]
    u8p = ctypes.POINTER(ctypes.c_uint8)
    lib.dcae_encode_rate.argtypes = [ctypes.c_void_p, u8p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_double,
                                     ctypes.c_uint64, ctypes.c_double, ctypes.POINTER(ctypes.c_uint16),
                                     ctypes.POINTER(u8p), ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p,
                                     ctypes.c_void_p, ctypes.c_void_p]
    for name in ("dcae_error", "dcae_error_kind"):
        getattr(lib, name).restype = ctypes.c_char_p
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    error = ctypes.create_string_buffer(512)
    handle = lib.dcae_open(str(tiny_bundle).encode(), b"openvino", 2, error, len(error))
    assert handle, error.value
    pixels = kodak_crop("kodim05", 32, 48, top=100, left=100)
    rgb = np.ascontiguousarray(pixels)

    def encode(quality=-1.0, max_bytes=0, target_bpp=0.0):
        file, size, gain_code = u8p(), ctypes.c_size_t(), ctypes.c_uint16()
        status = lib.dcae_encode_rate(handle, rgb.ctypes.data_as(u8p), 32, 48, quality, max_bytes, target_bpp,
                                      ctypes.byref(gain_code), ctypes.byref(file), ctypes.byref(size), None, None,
                                      None)
        if status:
            return lib.dcae_error_kind(handle).decode(), lib.dcae_error(handle).decode()
        data = ctypes.string_at(file, size.value)
        lib.dcae_free(file)
        return data, gain_code.value

    try:
        data, gain_code = encode(quality=85)
        assert data == openvino_codec.compress(pixels, quality=85)
        assert gain_code == unpack(data).header.gain_code == openvino_codec.rate_levels.gain_code(85)
        assert encode()[0] == openvino_codec.compress(pixels)
        cap = len(openvino_codec.compress(pixels, quality=30))
        data, gain_code = encode(max_bytes=cap)
        assert data == openvino_codec.compress(pixels, max_bytes=cap)
        assert gain_code == openvino_codec.last_rate_search.gain_code and len(data) <= cap
        assert encode(quality=101) == ("bad_input", "quality must be from 0 to 100, got 101")
        assert encode(quality=20, max_bytes=cap) == ("bad_input",
                                                     "give one of quality, max_bytes and target_bpp, not quality "
                                                     "and max_bytes")
        kind, message = encode(max_bytes=10)
        assert kind == "bad_input" and message.startswith("--max-bytes 10 is out of reach"), message
    finally:
        lib.dcae_close(handle)
