"""Portable bitstreams: the side stream, the portable `.dcae` header, and files that decode on every setup."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from dcae_deploy.runtime.container import HEADER_SIZE, DcaeFile, DcaeHeader, pack, unpack
from dcae_deploy.runtime.cpu import second_float_path
from dcae_deploy.runtime.entropy import build_indexes
from dcae_deploy.runtime.errors import CorruptStreamError, DcaeError, FingerprintMismatchError
from dcae_deploy.runtime.portable import (MAX_MARGIN, NO_SHIFTS, SHIFT_COUNTS, SHIFT_STEPS, MarginError,
                                          PortableDecoding, ThresholdShifts, Thresholds, apply_side_stream,
                                          decode_side_stream, encode_portable, encode_side_stream, mark)
from tests.fuzzing import mutations
from tests.portable_files import CROPS, SETS, crop, symbols_digest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
TABLE = np.exp(np.linspace(np.log(0.11), np.log(256), 64)).astype(np.float32)
BOUND = float(np.float32(0.11))
FINGERPRINT = bytes(range(16))


# ---- the marked list's bytes --------------------------------------------------------------

def _listed(positions, bits, total: int) -> bytes:
    """The side stream without shifts: the marked list alone."""
    return encode_side_stream(NO_SHIFTS, positions, bits, total)


@pytest.mark.parametrize("total, count", [(1, 1), (7, 7), (1000, 3), (1000, 999), (245_760, 40), (3_000_000, 500)])
def test_side_stream_round_trips_positions_and_bits(total, count):
    rng = np.random.default_rng(total + count)
    positions = np.sort(rng.choice(total, size=count, replace=False))
    bits = rng.integers(0, 2, count).astype(np.uint8)
    data = _listed(positions, bits, total)
    decoded = decode_side_stream(data, total)
    assert np.array_equal(decoded.positions, positions) and np.array_equal(decoded.bits, bits)
    assert decoded.shifts.count == 1 and data[0] == 0
    # Near the entropy of the gaps: for sparse positions a Rice code spends
    # about log2(mean gap) + 3.5 bits per entry, never much more.
    if count < total / 8:
        assert len(data) * 8 <= 6 * 8 + count * (np.log2(total / count) + 3.5) + 8


def test_a_side_stream_without_shifts_or_listed_elements_is_one_byte():
    assert _listed(np.zeros(0, np.int64), np.zeros(0, np.uint8), 100) == b"\x00"
    assert decode_side_stream(b"\x00", 100).positions.size == 0


def _stream(k: int, n: int, bits: str) -> bytes:
    """A side stream without shifts whose marked list is written from the spec."""
    bits += "0" * (-len(bits) % 8)
    return b"\x00" + bytes([k]) + struct.pack("<I", n) + (int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b"")


@pytest.mark.parametrize("data, total, fragment", [
    (b"\x00\x00\x01", 10, "shorter than its 5-byte head"),
    (_stream(31, 1, "0" + "0" * 31 + "1"), 10, "Rice parameter 31"),
    (_stream(0, 0, "00"), 10, "lists 0 elements"),
    (_stream(0, 11, "00" * 11), 10, "lists 11 elements"),
    (_stream(0, 2, "1111111111110" + "0" + "00"), 10, "gap longer"),
    (_stream(2, 1, "110" + "11" + "0"), 10, "past the latent"),  # gap 11 in a latent of 10
    (b"\x00" + bytes([0]) + struct.pack("<I", 3) + b"\xff", 10, "ends before"),
    (b"\x00" + bytes([1]) + struct.pack("<I", 1) + bytes([0b00010000]), 10, "padding bits"),
    (b"\x00" + bytes([1]) + struct.pack("<I", 1) + b"\x00\x00", 10, "after its entries"),
    (b"\x00" + bytes([0]) + struct.pack("<I", 0xFFFFFFFF) + b"\x00" * 8, 2**40, "cannot hold"),
])
def test_malformed_side_streams_are_refused_in_one_line(data, total, fragment):
    with pytest.raises(CorruptStreamError) as info:
        decode_side_stream(data, total)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_mutated_side_streams_parse_or_are_refused():
    total = 50_000
    rng = np.random.default_rng(0)
    positions = np.sort(rng.choice(total, 300, replace=False))
    data = _listed(positions, rng.integers(0, 2, 300).astype(np.uint8), total)
    outcomes = {"parsed": 0, "refused": 0}
    for mutant in mutations(data, 2000, seed=5):
        try:
            parsed = decode_side_stream(mutant, total)
        except CorruptStreamError:
            outcomes["refused"] += 1
            continue
        # What parses is always a valid list: increasing and inside the latent.
        assert np.all(np.diff(parsed.positions) > 0) and (parsed.positions.size == 0 or parsed.positions[-1] < total)
        outcomes["parsed"] += 1
    assert outcomes["refused"] > 1000


# ---- marking and applying ------------------------------------------------------------------

def _scales_near_boundaries(rng, n: int, spread: float) -> np.ndarray:
    """Scales of which many lie within `spread` (ln) of a table entry, and some below the bound."""
    critical = TABLE[rng.integers(0, 63, n)].astype(np.float64)
    scales = critical * np.exp(rng.uniform(-spread, spread, n))
    scales[: n // 10] = rng.uniform(0.0, 0.11, n // 10)
    return scales.astype(np.float32)


def test_thresholds_are_where_the_index_changes():
    thresholds = Thresholds.from_table(TABLE, BOUND)
    grid = np.exp(np.linspace(np.log(0.01), np.log(300), 200_001)).astype(np.float32)
    index = build_indexes(grid, TABLE, BOUND)
    steps = grid[1:][np.diff(index) != 0]
    # Every step of the index sits just above a critical value, and every critical value has one.
    assert len(steps) == thresholds.critical.size
    assert np.all(np.abs(np.log(steps / thresholds.critical)) < 1e-4)
    assert np.array_equal(build_indexes(thresholds.critical, TABLE, BOUND), thresholds.below)
    assert np.array_equal(build_indexes(thresholds.critical * (1 + 1e-6), TABLE, BOUND), thresholds.above)


def test_marking_lists_exactly_the_elements_within_the_margin():
    rng = np.random.default_rng(1)
    thresholds = Thresholds.from_table(TABLE, BOUND)
    scales = _scales_near_boundaries(rng, 20_000, 3e-4)
    margin = 1e-4
    positions, bits = mark(scales, build_indexes(scales, TABLE, BOUND), thresholds, margin)
    distance = np.min(np.abs(np.log(scales.astype(np.float64)[:, None].clip(1e-30) / thresholds.critical[None])), 1)
    expected = np.flatnonzero((distance <= margin) & (scales > 0))
    assert np.array_equal(positions, expected) and 1000 < positions.size < 19_000
    above = scales[positions].astype(np.float64) > thresholds.critical[thresholds.nearest(scales[positions])[0]]
    assert np.array_equal(bits.astype(bool), above)


@pytest.mark.parametrize("error", [1e-6, 4e-5])
def test_a_decoder_within_the_margin_gets_every_index_and_without_the_list_would_not(error):
    rng = np.random.default_rng(2)
    thresholds = Thresholds.from_table(TABLE, BOUND)
    margin = 1e-4  # for setups within 5e-5 of float64: any two differ by under 1e-4
    encoder = _scales_near_boundaries(rng, 50_000, 3e-4)
    encoder_indexes = build_indexes(encoder, TABLE, BOUND)
    positions, bits = mark(encoder, encoder_indexes, thresholds, margin)
    decoder = (encoder * np.exp(rng.uniform(-error, error, encoder.size))).astype(np.float32)
    indexes = build_indexes(decoder, TABLE, BOUND)
    assert np.any(indexes != encoder_indexes)  # without the side stream some indexes move
    apply_side_stream(decoder, indexes, positions, bits, thresholds, margin)
    assert np.array_equal(indexes, encoder_indexes)


def test_a_decoder_outside_the_margin_or_a_wrong_list_is_an_error():
    rng = np.random.default_rng(3)
    thresholds = Thresholds.from_table(TABLE, BOUND)
    margin = 1e-4
    encoder = _scales_near_boundaries(rng, 20_000, 3e-4)
    positions, bits = mark(encoder, build_indexes(encoder, TABLE, BOUND), thresholds, margin)
    far = (encoder * np.exp(rng.uniform(-1e-3, 1e-3, encoder.size))).astype(np.float32)
    with pytest.raises(MarginError):
        apply_side_stream(far, build_indexes(far, TABLE, BOUND), positions, bits, thresholds, margin)
    # A listed element dropped from the list (one nearer its boundary than
    # margin / 2: what a decoder within the file's margin can tell).
    keep = np.ones(positions.size, bool)
    keep[np.argmin(thresholds.nearest(encoder[positions])[1])] = False
    with pytest.raises(MarginError):
        apply_side_stream(encoder, build_indexes(encoder, TABLE, BOUND), positions[keep], bits[keep], thresholds,
                          margin)
    unlisted = np.flatnonzero(thresholds.nearest(encoder)[1] > 1.5 * margin)[:1]
    with pytest.raises(MarginError):  # an element far from any boundary listed
        apply_side_stream(encoder, build_indexes(encoder, TABLE, BOUND), np.sort(np.r_[positions, unlisted]),
                          np.zeros(positions.size + 1, np.uint8), thresholds, margin)


# ---- threshold shifts ------------------------------------------------------------------------

def _shifted_index(scales, shift, thresholds):
    """The index with every critical value moved by `shift` (ln), from its definition."""
    log_s = np.log(scales.astype(np.float64))
    base = thresholds.below[0]
    return base + np.sum(thresholds.log_critical[None, :] + shift[:, None] < log_s[:, None], axis=1)


def test_shifted_indexes_count_the_moved_critical_values():
    rng = np.random.default_rng(4)
    thresholds = Thresholds.from_table(TABLE, BOUND)
    scales = np.exp(rng.uniform(np.log(0.05), np.log(300), 100_000)).astype(np.float32)
    assert SHIFT_STEPS.tolist() == [0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6, 7, -7, 8]
    shift = SHIFT_STEPS[rng.integers(0, SHIFT_STEPS.size, scales.size)] * 2 * 1e-3
    indexes = build_indexes(scales, TABLE, BOUND)
    thresholds.shift_indexes(scales, indexes, shift)
    # Away from the moved values (where float rounding decides) the index is
    # the count of moved critical values under the scale.
    clear = thresholds.nearest(scales, shift)[1] > 1e-9
    assert np.array_equal(indexes[clear], _shifted_index(scales, shift, thresholds)[clear])
    assert np.sum(indexes != build_indexes(scales, TABLE, BOUND)) > 1000


@pytest.mark.parametrize("count, block, total", [
    (2, 1, 100), (4, 384, 61_440), (8, 1536, 245_760), (8, 7, 1000), (16, 192, 245_760), (16, 5, 1001)])
def test_side_stream_round_trips_shifts_and_marked_list(count, block, total):
    rng = np.random.default_rng(count * block)
    blocks = -(-total // block)
    shifts = ThresholdShifts(count, block, rng.integers(0, count, blocks).astype(np.uint8))
    positions = np.sort(rng.choice(total, size=min(total, 30), replace=False))
    bits = rng.integers(0, 2, positions.size).astype(np.uint8)
    data = encode_side_stream(shifts, positions, bits, total)
    for known in (total, None):  # None: as `dcae inspect` reads it, without the model
        parsed = decode_side_stream(data, known)
        assert parsed.shifts.count == count and parsed.shifts.block == block
        assert np.array_equal(parsed.shifts.choices, shifts.choices)
        assert np.array_equal(parsed.positions, positions) and np.array_equal(parsed.bits, bits)


def _shifted(width: int, block: int, blocks: int, choices: bytes, rest: bytes = b"") -> bytes:
    return bytes([width]) + struct.pack("<II", block, blocks) + choices + rest


@pytest.mark.parametrize("count", [3, 32])
def test_a_side_stream_carries_a_power_of_two_up_to_16_shifts(count):
    with pytest.raises(ValueError, match=f"no shift count {count}"):
        encode_side_stream(ThresholdShifts(count, 1, np.zeros(10, np.uint8)), np.zeros(0, np.int64),
                           np.zeros(0, np.uint8), 10)


@pytest.mark.parametrize("data, total, fragment", [
    (b"", 10, "is empty"),
    (b"\x05", 10, "over 16"),
    (b"\x01\x01\x00", 10, "shorter than its shift head"),
    (_shifted(1, 0, 1, b"\x00"), 10, "0 elements"),
    (_shifted(1, 5, 3, b"\x00"), 10, "for a latent of 10"),
    (_shifted(3, 1, 0xFFFFFFFF, b"\x00" * 4), 0xFFFFFFFF, "cannot hold"),
    (_shifted(1, 5, 2, b"\x20"), 10, "padding"),
    (_shifted(4, 4, 3, b"\x00\x01"), 10, "padding"),
    (_shifted(1, 5, 2, b"\x00", b"\x00"), 10, "shorter than"),
    (_shifted(1, 5, 2, b"\x00", _stream(2, 1, "110" + "11" + "0")[1:]), 10, "past the latent"),
])
def test_malformed_shifted_side_streams_are_refused_in_one_line(data, total, fragment):
    with pytest.raises(CorruptStreamError) as info:
        decode_side_stream(data, total)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_more_shifts_than_the_margin_allows_are_refused():
    thresholds = Thresholds.from_table(TABLE, BOUND)
    spacing = float(np.min(np.diff(thresholds.log_critical)))
    # 4 shifts reach 0.4 of a spacing (+2 steps), 8 would reach 0.8.
    margin = spacing / 10
    assert thresholds.largest_shift_count(margin) == 4
    assert thresholds.largest_shift_count(1e-4) == 16
    data = encode_side_stream(ThresholdShifts(8, 10, np.zeros(10, np.uint8)), np.zeros(0, np.int64),
                              np.zeros(0, np.uint8), 100)
    with pytest.raises(CorruptStreamError, match="threshold shifts"):
        PortableDecoding(data, 100, thresholds, margin)


@pytest.mark.parametrize("error", [1e-6, 4e-5])
def test_a_decoder_within_the_margin_gets_the_encoders_shifted_indexes(error):
    """A latent crowded near the boundaries (scales made here, not by a
    model: the same on every CPU), where shifts pay by far: the encoder's
    side stream is the smallest of its candidates, and a decoder whose
    scales are within the margin recovers every index the encoder coded with."""
    rng = np.random.default_rng(5)
    thresholds = Thresholds.from_table(TABLE, BOUND)
    margin = 1e-4
    encoder = _scales_near_boundaries(rng, 64 * 24 * 32, 2e-2).reshape(1, 64, 24, 32)
    unshifted = build_indexes(encoder, TABLE, BOUND)
    encoding = encode_portable(encoder, unshifted, thresholds, margin)
    assert encoding.shifts.count in SHIFT_COUNTS[1:] and np.any(encoding.indexes != unshifted)
    assert len(encoding.side) < len(_listed(*mark(encoder, unshifted, thresholds, margin), encoder.size))
    decoder = (encoder * np.exp(rng.uniform(-error, error, encoder.shape))).astype(np.float32)
    assert not np.array_equal(build_indexes(decoder, TABLE, BOUND), encoding.indexes)
    reader = PortableDecoding(encoding.side, encoder.size, thresholds, margin)
    slice_size = encoder.size // 4
    for i in range(4):  # slice by slice, as the decoders run
        scales = decoder.reshape(-1)[i * slice_size : (i + 1) * slice_size]
        indexes = build_indexes(scales, TABLE, BOUND)
        reader.apply(i * slice_size, scales, indexes)
        assert np.array_equal(indexes, encoding.indexes.reshape(-1)[i * slice_size : (i + 1) * slice_size])
    far = (encoder * np.exp(rng.uniform(-1e-3, 1e-3, encoder.shape))).astype(np.float32)
    with pytest.raises(MarginError):
        reader.apply(0, far.reshape(-1), build_indexes(far, TABLE, BOUND).reshape(-1))


# ---- the portable .dcae header ------------------------------------------------------------

def test_portable_header_carries_the_side_stream_and_the_margin():
    header = DcaeHeader(300, 517, FINGERPRINT, margin=1e-5)
    z, y, side = b"z" * 12, b"y" * 40, b"\x00\x03\x01\x00\x00\x00\x80"
    data = pack(header, z, y, side)
    assert HEADER_SIZE == 64 and len(data) == 64 + 12 + 40 + 7
    fields = struct.unpack_from("<4sBBHIIIIHH16sIIIfI", data)
    assert fields[:4] == (b"DCAE", 3, 0b10, 4096)  # format 3, portable, gain 1
    assert fields[4:10] == (300, 517, 384, 640, 6, 10) and fields[10] == FINGERPRINT
    assert fields[11:14] == (12, 40, 7) and fields[14] == np.float32(1e-5)
    assert fields[15] == zlib.crc32(data[:60] + z + y + side)
    assert unpack(data) == DcaeFile(header, z, y, side)
    assert unpack(data).header.portable and unpack(data).header.margin == float(np.float32(1e-5))


def _patched(data: bytes, offset: int, code: str, value) -> bytes:
    patched = bytearray(data)
    struct.pack_into("<" + code, patched, offset, value)
    crc = zlib.crc32(bytes(patched[:60]) + bytes(patched[64:]))
    struct.pack_into("<I", patched, 60, crc)
    return bytes(patched)


@pytest.mark.parametrize("offset, code, value, fragment", [
    (56, "f", float("nan"), "margin"), (56, "f", 0.0, "margin"), (56, "f", MAX_MARGIN * 2, "margin"),
    (56, "f", -1e-5, "margin"), (5, "B", 0b11, "both portable and reduced"), (5, "B", 0, "not portable"),
    (5, "B", 0b10010, "flag bits 0x10"), (5, "B", 0b110, "flag bits 0x04"), (5, "B", 0b1010, "flag bits 0x08"),
    (5, "B", 0b1110, "flag bits 0x0c"), (52, "I", 0, "no side stream"), (52, "I", 7, "truncated"),
    (52, "I", 5, "after its payload"), (6, "H", 0, "gain_code 0"), (4, "B", 2, "predates"),
])
def test_portable_header_fields_are_checked(offset, code, value, fragment):
    data = pack(DcaeHeader(64, 64, FINGERPRINT, margin=1e-5), b"z" * 8, b"y" * 8, b"\x00" * 6)
    with pytest.raises(CorruptStreamError) as info:
        unpack(_patched(data, offset, code, value))
    assert fragment in str(info.value)


def test_only_float32_entropy_files_are_portable_and_only_they_carry_a_side_stream():
    with pytest.raises(ValueError):
        DcaeHeader(64, 64, FINGERPRINT, reduced_precision_entropy=True, margin=1e-5)
    with pytest.raises(ValueError):
        pack(DcaeHeader(64, 64, FINGERPRINT), b"z" * 8, b"y" * 8, b"side")
    with pytest.raises(ValueError):
        pack(DcaeHeader(64, 64, FINGERPRINT, margin=1e-5), b"z" * 8, b"y" * 8)


# ---- every setup decodes every other's files ------------------------------------------------



@pytest.fixture(scope="module")
def model():
    from dcae import load_checkpoint

    return load_checkpoint().eval()


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("portable_images")
    for name in CROPS:
        Image.fromarray(crop(name)).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def bundles(model, image_dir, tmp_path_factory):
    """fp32 and int8 (onnxruntime form, entropy graphs fp32) bundles of the embedded model."""
    from dcae.checkpoint import DEFAULT_CHECKPOINT
    from dcae_deploy.export.calibrate import make_int8_quantizer
    from dcae_deploy.export.export import export_bundle

    root = tmp_path_factory.mktemp("portable_bundles")
    quiet = {"progress": lambda *a, **k: None, "threads": 1, "preset": "small", "source_checkpoint": DEFAULT_CHECKPOINT}
    export_bundle(model, root / "fp32", **quiet)
    quantize = make_int8_quantizer(model, DATA / "train", count=4, holdout=1, crop_size=(256, 256))
    # Its encoder writes the default margin: the measured one is the fp32 bundle's concern here.
    export_bundle(model, root / "int8", precision="int8", quantize=quantize, measure_margin=False, **quiet)
    return {"fp32": root / "fp32", "int8": root / "int8"}


# The reference on kernels other than this CPU's default ones: AVX2 where the
# default is AVX-512, SSE4.1 on an AVX2-only CPU.
SECOND_PATH, SECOND_PATH_ENV = second_float_path()


def _run_worker(args: list[str]) -> None:
    env = {**os.environ, **SECOND_PATH_ENV, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "tests.reference_worker", *map(str, args)], cwd=REPO, env=env,
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def other_kernels_encoded(image_dir, tmp_path_factory) -> Path:
    """The reference's files and latents on the second float path (<stem>.dcae, <stem>.npz)."""
    folder = tmp_path_factory.mktemp("other_kernels_encoded")
    _run_worker(["encode", folder, *sorted(image_dir.glob("*.png"))])
    return folder


@pytest.fixture(scope="module")
def encoded(model, bundles, image_dir, other_kernels_encoded):
    """{encoder: {image: (file bytes, the encoder's symbols)}} for every encoder setup."""
    from dcae.coding import encode_image
    from dcae_deploy.runtime import Codec

    images = sorted(image_dir.glob("*.png"))
    out = {"reference": {}}
    for path in images:
        data, latents = encode_image(model, path, format="dcae")
        out["reference"][path.stem] = (data, latents["symbols"].numpy().reshape(-1))
    for name, bundle in bundles.items():
        codec = Codec(bundle, threads=1)
        out[f"runtime-{name}"] = {}
        for path in images:
            result = codec.encode(path)
            out[f"runtime-{name}"][path.stem] = (result.data, result.symbols.reshape(-1))
    out[f"reference-{SECOND_PATH}"] = {p.stem: ((other_kernels_encoded / f"{p.stem}.dcae").read_bytes(),
                                                np.load(other_kernels_encoded / f"{p.stem}.npz")["symbols"])
                                       for p in images}
    return out


@pytest.mark.slow
def test_every_setup_decodes_every_setups_files_to_the_encoders_symbols(encoded, model, bundles, tmp_path):
    """Encoders x decoders over {reference, reference on other kernels in a
    subprocess (AVX2, or SSE4.1 on an AVX2-only CPU), runtime fp32 bundle,
    runtime int8 bundle}: 0 refused, 0
    desynchronised, 0 wrong symbols; the images agree within a level or two
    (g_s differs between fp32 and int8, so they are compared per decoder
    against that decoder's decode of its own file)."""
    from dcae.coding import decode_dcae
    from dcae_deploy.runtime import Codec

    files = [(encoder, image, data, symbols) for encoder, per_image in encoded.items()
             for image, (data, symbols) in per_image.items()]
    paths = []
    for k, (_, _, data, _) in enumerate(files):
        paths.append(tmp_path / f"{k}.dcae")
        paths[-1].write_bytes(data)
    _run_worker(["decode", tmp_path / "other.npz", *paths])
    other = np.load(tmp_path / "other.npz")

    decoders = {"reference": lambda data: decode_dcae(model, data)}
    for name, bundle in bundles.items():
        codec = Codec(bundle, threads=1)
        decoders[f"runtime-{name}"] = lambda data, codec=codec: (lambda r: (r.x, r.symbols))(codec.decode(data))
    failures = []
    for k, (encoder, image, data, symbols) in enumerate(files):
        for decoder, decode in decoders.items():
            try:
                pixels, decoded = decode(data)
            except DcaeError as exc:
                failures.append(f"{encoder} -> {decoder}, {image}: {type(exc).__name__}: {exc}")
                continue
            if not np.array_equal(decoded, symbols):
                failures.append(f"{encoder} -> {decoder}, {image}: {int(np.sum(decoded != symbols))} wrong symbols")
        if f"error_{k}" in other.files:
            failures.append(f"{encoder} -> reference-{SECOND_PATH}, {image}: {other[f'error_{k}']}")
        elif not np.array_equal(other[f"symbols_{k}"], symbols):
            failures.append(f"{encoder} -> reference-{SECOND_PATH}, {image}: wrong symbols")
    assert not failures, "\n".join(failures)
    assert len(files) == 4 * len(CROPS)
    # The side streams were exercised: real files list elements.
    assert sum(len(unpack(data).side) > 0 for *_, data, _ in files) >= 4


def test_the_second_float_path_computes_other_scales(other_kernels_encoded, model, image_dir):
    """The second float path is real: its scales differ from the default
    kernels' (so the matrix above crosses CPU families)."""
    from dcae.coding import encode_image

    path = image_dir / "kodim01_256x384.png"
    _, latents = encode_image(model, path, format="dcae")
    other_scales = np.load(other_kernels_encoded / "kodim01_256x384.npz")["scales"]
    assert not np.array_equal(other_scales, latents["scales"].numpy())


def test_the_cli_and_the_reference_read_each_others_files(encoded, model, bundles, tmp_path):
    from dcae.coding import compress_image, decompress_image
    from dcae_deploy.runtime.cli import main
    from dcae_deploy.runtime.imaging import load_image

    source = DATA / "kodak" / "kodim02.png"
    pixels = load_image(source)[:128, :160]
    image = tmp_path / "crop.png"
    from PIL import Image

    Image.fromarray(pixels).save(image)
    assert main(["compress", str(image), "-b", str(bundles["fp32"]), "-o", str(tmp_path / "cli.dcae"),
                 "--threads", "1"]) == 0
    from_cli = decompress_image(model, (tmp_path / "cli.dcae").read_bytes())
    (tmp_path / "ref.dcae").write_bytes(compress_image(model, image, format="dcae"))
    assert main(["decompress", str(tmp_path / "ref.dcae"), "-b", str(bundles["int8"]), "-o",
                 str(tmp_path / "ref.png"), "--threads", "1"]) == 0
    from_reference = load_image(tmp_path / "ref.png")
    reference_own = decompress_image(model, (tmp_path / "ref.dcae").read_bytes())
    assert from_cli.shape == from_reference.shape == pixels.shape
    # int8 g_s against fp32 g_s: close, not equal.
    assert np.abs(from_reference.astype(int) - reference_own.astype(int)).mean() < 2.0


def test_a_file_for_one_setup_or_another_model_is_refused(model, bundles, tiny_bundle, kodak_crop):
    from dcae.coding import decompress_image
    from dcae_deploy.runtime import Codec

    pixels = kodak_crop("kodim01", 40, 40)
    own_setup = Codec(bundles["fp32"], threads=1).compress(pixels, margin=None)
    assert not unpack(own_setup).header.portable
    with pytest.raises(FingerprintMismatchError, match="not portable"):
        decompress_image(model, own_setup)
    other_model = Codec(tiny_bundle, threads=1).compress(pixels)
    assert unpack(other_model).header.portable
    with pytest.raises(FingerprintMismatchError, match="another entropy model"):
        Codec(bundles["fp32"], threads=1).decompress(other_model)
    with pytest.raises(FingerprintMismatchError, match="another model"):
        decompress_image(model, other_model)


def test_files_of_an_earlier_format_or_another_gain_are_refused_by_every_decoder(model, bundles):
    """Every decoder (the reference, the runtime on each bundle) refuses, in
    one line, a file of format version 2 and a file whose header claims
    another gain than its streams were coded at (read at gain 2, the scales
    leave the side stream's margin); the same file as written decodes."""
    from dcae.coding import decode_dcae, encode_image
    from dcae_deploy.runtime import Codec

    data, latents = encode_image(model, crop("kodim02_37x53"), format="dcae")

    def patched(offset: int, code: str, value) -> bytes:
        changed = bytearray(data)
        struct.pack_into("<" + code, changed, offset, value)
        struct.pack_into("<I", changed, 60, zlib.crc32(bytes(changed[64:]), zlib.crc32(bytes(changed[:60]))))
        return bytes(changed)

    decoders = {"reference": lambda d: decode_dcae(model, d, synthesize=False)[1]}
    for name, bundle in bundles.items():
        codec = Codec(bundle, threads=1)
        decoders[f"runtime-{name}"] = lambda d, codec=codec: codec.decode(d, synthesize=False).symbols
    refusals = {"format 2": (patched(4, "B", 2), ".dcae format version 2 predates this decoder's format 3; "
                                                 "re-encode the image"),
                "gain 2": (patched(6, "H", 8192), "decoder's scales")}
    for decoder, decode in decoders.items():
        assert np.array_equal(decode(data), latents["symbols"].numpy().reshape(-1)), decoder
        for name, (bad, message) in refusals.items():
            with pytest.raises(CorruptStreamError) as info:
                decode(bad)
            assert str(info.value).startswith(message) and "\n" not in str(info.value), (decoder, name)


@pytest.mark.slow
def test_files_written_on_other_machines_decode_here_to_their_encoders_symbols(bundles, model, tmp_path):
    """Every checked-in set of portable files (tests/data/portable/<cpu>/,
    written by `python -m tests.portable_files write` on a machine of that
    kind: the reference, the runtime on onnxruntime and on OpenVINO) decodes
    on this machine, with the reference (default and other kernels) and the
    runtime (fp32 bundle on onnxruntime and OpenVINO, int8 bundle), to the
    symbols its encoder coded."""
    import json

    from dcae.coding import decode_dcae
    from dcae_deploy.runtime import Codec
    from dcae_deploy.runtime.manifest import Manifest

    sets = sorted(p.parent for p in SETS.glob("*/index.json"))
    assert sets, "no checked-in portable files"
    fingerprint = Manifest.read(bundles["fp32"]).entropy_model_fingerprint
    decoders = {"reference": lambda data: decode_dcae(model, data)[1]}
    for backend in ("onnxruntime", "openvino"):
        codec = Codec(bundles["fp32"], backend=backend, threads=1)
        decoders[f"runtime-fp32-{backend}"] = lambda data, codec=codec: codec.decode(data).symbols
    int8 = Codec(bundles["int8"], threads=1)
    decoders["runtime-int8"] = lambda data: int8.decode(data).symbols
    failures, files = [], []
    for folder in sets:
        index = json.loads((folder / "index.json").read_text())
        assert index["entropy_model_fingerprint"] == fingerprint, (
            f"{folder.name}: written with another embedded model; rewrite every set "
            f"(python -m tests.portable_files write, on a machine of each kind)")
        for relative, entry in index["files"].items():
            data = (folder / relative).read_bytes()
            files.append((f"{folder.name}/{relative}", entry["symbols_sha256"]))
            (tmp_path / f"{len(files)}.dcae").write_bytes(data)
            for decoder, decode in decoders.items():
                try:
                    digest = symbols_digest(decode(data))
                except DcaeError as exc:
                    failures.append(f"{files[-1][0]} -> {decoder}: {type(exc).__name__}: {exc}")
                    continue
                if digest != entry["symbols_sha256"]:
                    failures.append(f"{files[-1][0]} -> {decoder}: other symbols than its encoder's")
    _run_worker(["decode", tmp_path / "other.npz", *(tmp_path / f"{k + 1}.dcae" for k in range(len(files)))])
    other = np.load(tmp_path / "other.npz")
    for k, (name, expected) in enumerate(files):
        if f"error_{k}" in other.files:
            failures.append(f"{name} -> reference-{SECOND_PATH}: {other[f'error_{k}']}")
        elif symbols_digest(other[f"symbols_{k}"]) != expected:
            failures.append(f"{name} -> reference-{SECOND_PATH}: other symbols than its encoder's")
    assert not failures, "\n".join(failures)
    assert len(files) >= len(CROPS) * 3
