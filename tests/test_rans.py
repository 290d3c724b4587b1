"""dcae_deploy.runtime.rans / dcae_deploy.runtime.entropy against compressai 1.2.8, byte for byte.

The symbol streams are drawn the way DCAE produces them: scales spread
log-uniformly over the real 64-entry scale table, table indexes from
compressai's own `build_indexes`, values from a Laplacian or Gaussian of that
scale, and the real quantised CDFs of `GaussianConditional.update_scale_table`.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch = pytest.importorskip("torch")
ans = pytest.importorskip("compressai.ans")
from compressai.entropy_models import EntropyBottleneck, GaussianConditional  # noqa: E402

from fuzzing import mutations  # noqa: E402  (tests/ is on sys.path under pytest)
from dcae_deploy.runtime import entropy, rans  # noqa: E402
from dcae_deploy.runtime.errors import BadInputError, CorruptStreamError, DcaeError, DesyncError  # noqa: E402

N_SYMBOLS = 20_000  # enough to hit every table and several escapes, still quick


# ----------------------------------------------------------------------------
# fixtures and helpers
# ----------------------------------------------------------------------------

class Tables:
    """One set of entropy tables, as numpy arrays and as compressai's lists."""

    def __init__(self, cdfs, cdf_lengths, offsets):
        self.cdfs = cdfs.numpy().astype(np.int32)
        self.cdf_lengths = cdf_lengths.numpy().astype(np.int32)
        self.offsets = offsets.numpy().astype(np.int32)
        self.lists = (self.cdfs.tolist(), self.cdf_lengths.tolist(), self.offsets.tolist())

    @property
    def arrays(self):
        return self.cdfs, self.cdf_lengths, self.offsets


@pytest.fixture(scope="module")
def gaussian():
    """DCAE's GaussianConditional with its 64-entry scale table."""
    conditional = GaussianConditional(None)
    table = torch.exp(torch.linspace(math.log(0.11), math.log(256), 64))
    conditional.update_scale_table(table, force=True)
    return conditional


@pytest.fixture(scope="module")
def tables(gaussian):
    return Tables(gaussian.quantized_cdf, gaussian.cdf_length, gaussian.offset)


def real_stream(gaussian, n, seed, law="laplace"):
    """(symbols, indexes) as int32 arrays, distributed like DCAE's y."""
    rng = np.random.default_rng(seed)
    table = gaussian.scale_table.numpy()
    # Start below the table: DCAE's most frequent index is 0, the clamped scales.
    scales = np.exp(rng.uniform(np.log(table[0] / 2), np.log(table[-1]), n)).astype(np.float32)
    indexes = gaussian.build_indexes(torch.from_numpy(scales)).numpy().astype(np.int32)
    if law == "laplace":
        values = rng.laplace(0.0, scales / math.sqrt(2))
    else:
        values = rng.normal(0.0, scales)
    return np.round(values).astype(np.int32), indexes


def compressai_encode(symbols, indexes, tables):
    return ans.RansEncoder().encode_with_indexes(
        symbols.tolist(), indexes.tolist(), *tables.lists)


def compressai_buffered_encode(slices, tables):
    """One BufferedRansEncoder fed slice by slice, as DCAE's compress does."""
    encoder = ans.BufferedRansEncoder()
    for symbols, indexes in slices:
        encoder.encode_with_indexes(symbols.tolist(), indexes.tolist(), *tables.lists)
    return encoder.flush()


def compressai_decode_slices(data, index_slices, tables):
    decoder = ans.RansDecoder()
    decoder.set_stream(data)
    return [np.array(decoder.decode_stream(idx.tolist(), *tables.lists), dtype=np.int32)
            for idx in index_slices]


def assert_matches_compressai(symbols, indexes, tables):
    """Our bytes equal compressai's, and both decoders give the symbols back."""
    ours = rans.encode_with_indexes(symbols, indexes, *tables.arrays)
    assert ours == compressai_encode(symbols, indexes, tables)
    assert ours == compressai_buffered_encode([(symbols, indexes)], tables)
    np.testing.assert_array_equal(rans.decode_with_indexes(ours, indexes, *tables.arrays), symbols)
    np.testing.assert_array_equal(
        ans.RansDecoder().decode_with_indexes(ours, indexes.tolist(), *tables.lists), symbols)
    return ours


def decode_all_slices(data, index_slices, tables):
    """Decode `data` in the given slices and finish; any failure propagates."""
    decoder = rans.RansStreamDecoder(data)
    parts = [decoder.decode(idx, *tables.arrays) for idx in index_slices]
    decoder.finish()
    return parts


# ----------------------------------------------------------------------------
# byte identity with compressai
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("law", ["laplace", "gaussian"])
def test_real_streams_match_compressai(gaussian, tables, law):
    symbols, indexes = real_stream(gaussian, N_SYMBOLS, seed=1, law=law)
    assert len(np.unique(indexes)) == 64
    assert_matches_compressai(symbols, indexes, tables)


def test_escapes_match_compressai(gaussian, tables):
    symbols, indexes = real_stream(gaussian, 4_000, seed=2)
    offsets, max_values = tables.offsets[indexes], tables.cdf_lengths[indexes] - 2
    below, top = offsets - 1, offsets + max_values  # first values outside each table
    # Every kind of escape, interleaved with ordinary symbols.
    specials = [
        np.full_like(symbols, 100_000), np.full_like(symbols, -100_000),
        below, below - 1, top, top + 1, top - 1,  # top - 1 is the table's last regular value
        offsets, np.full_like(symbols, (1 << 27) - 1), np.full_like(symbols, -(1 << 27)),
    ]
    for k, special in enumerate(specials):
        symbols[k::len(specials) + 3] = special[k::len(specials) + 3]
    assert_matches_compressai(symbols, indexes, tables)


def test_stream_of_escapes_matches_compressai(gaussian, tables):
    # ~40 bits a symbol: more than the encoder's first output buffer holds.
    symbols, indexes = real_stream(gaussian, 3_000, seed=14)
    rng = np.random.default_rng(14)
    far = rng.integers(10_000, 1 << 26, symbols.shape) * rng.choice([-1, 1], symbols.shape)
    data = assert_matches_compressai(far.astype(np.int32), indexes, tables)
    assert len(data) > 4 * (len(symbols) // 2 + 16)


def test_largest_codable_escape(tables):
    # compressai codes raw values below 2**28 and hangs above, so the edge is
    # checked against known values rather than by calling it there.
    index = np.zeros(1, dtype=np.int32)
    top = int(tables.offsets[0] + tables.cdf_lengths[0] - 2)
    largest = np.array([top + (1 << 27) - 1], dtype=np.int32)  # raw = 2**28 - 2
    assert_matches_compressai(largest, index, tables)
    for too_far in (top + (1 << 27), int(tables.offsets[0]) - (1 << 27) - 1, 2**31 - 1, -2**31):
        with pytest.raises(BadInputError):
            rans.encode_with_indexes(np.array([too_far], np.int32), index, *tables.arrays)


def test_empty_stream(tables):
    # compressai's encoder cannot make this one: its output buffer holds one
    # word per coded item, and with none its flush writes before the buffer
    # (a segfault). The stream is then just the initial state, which its
    # decoder accepts.
    empty = np.zeros(0, dtype=np.int32)
    data = rans.encode_with_indexes(empty, empty, *tables.arrays)
    assert data == (1 << 31).to_bytes(8, "little")
    assert ans.RansDecoder().decode_with_indexes(data, [], *tables.lists) == []
    assert rans.decode_with_indexes(data, empty, *tables.arrays).shape == (0,)


def test_all_zero(gaussian, tables):
    _, indexes = real_stream(gaussian, N_SYMBOLS, seed=3)
    assert_matches_compressai(np.zeros_like(indexes), indexes, tables)


def test_sliced_stream_like_dcae(gaussian, tables):
    """Five slices in one stream, one of them empty, decoded one after another."""
    symbols, indexes = real_stream(gaussian, 10_000, seed=4)
    cuts = [0, 1_000, 3_000, 3_000, 6_500, 10_000]
    slices = [(symbols[a:b], indexes[a:b]) for a, b in zip(cuts, cuts[1:])]
    index_slices = [idx for _, idx in slices]

    data = rans.encode_with_indexes(symbols, indexes, *tables.arrays)
    assert data == compressai_buffered_encode(slices, tables)
    ours = decode_all_slices(data, index_slices, tables)
    theirs = compressai_decode_slices(data, index_slices, tables)
    for (expected, _), got, reference in zip(slices, ours, theirs):
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(reference, expected)


def test_finish_before_the_end_is_a_desync(gaussian, tables):
    symbols, indexes = real_stream(gaussian, 2_000, seed=5)
    decoder = rans.RansStreamDecoder(rans.encode_with_indexes(symbols, indexes, *tables.arrays))
    decoder.decode(indexes[:1_500], *tables.arrays)
    with pytest.raises(DesyncError):
        decoder.finish()


def test_changed_index_is_a_desync(gaussian, tables):
    """Decoding with one index changed never passes: near the end of the
    stream the decoder finishes out of sync, earlier it usually runs past the
    end first (also a CorruptStreamError)."""
    symbols, indexes = real_stream(gaussian, 2_000, seed=6)
    data = rans.encode_with_indexes(symbols, indexes, *tables.arrays)

    def decode_with_changed_index(position, change):
        wrong = indexes.copy()
        wrong[position] = (wrong[position] + change) % 64
        decoder = rans.RansStreamDecoder(data)
        decoder.decode(wrong, *tables.arrays)
        return decoder

    decoder = decode_with_changed_index(1_900, 1)  # decodes, but ends out of sync
    with pytest.raises(DesyncError) as caught:
        decoder.finish()
    assert "\n" not in str(caught.value)
    for position in range(0, 2_000, 97):
        with pytest.raises(CorruptStreamError):
            decode_with_changed_index(position, 5).finish()


# ----------------------------------------------------------------------------
# corrupt streams and bad arguments
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("length", [0, 4, 7, 9, 10, 11, 13])
def test_bad_stream_lengths(tables, length):
    with pytest.raises(CorruptStreamError):
        rans.RansStreamDecoder(bytes(length))


def test_truncated_stream(gaussian, tables):
    symbols, indexes = real_stream(gaussian, 2_000, seed=7)
    data = rans.encode_with_indexes(symbols, indexes, *tables.arrays)
    for keep in (8, 12, len(data) // 2, len(data) - 4):
        with pytest.raises(CorruptStreamError):
            rans.decode_with_indexes(data[:keep], indexes, *tables.arrays)


def test_mutated_streams_fail_cleanly(gaussian, tables):
    """Damaged streams end in a DcaeError (mostly a desync or an early end),
    never a crash, an out-of-bounds read or a hang."""
    symbols, indexes = real_stream(gaussian, 3_000, seed=8)
    data = rans.encode_with_indexes(symbols, indexes, *tables.arrays)
    index_slices = np.array_split(indexes, 5)
    undetected = 0
    for damaged in mutations(data, count=300, seed=0):
        try:
            parts = decode_all_slices(damaged, index_slices, tables)
        except DcaeError:
            continue
        # rANS cannot see damage confined to an escape's raw bypass bits (they
        # change the value, not the state); the file's CRC has to catch that.
        undetected += 1
        assert np.concatenate(parts).shape == symbols.shape
    assert undetected <= 3


def test_random_streams_fail_cleanly(gaussian, tables):
    _, indexes = real_stream(gaussian, 3_000, seed=9)
    rng = np.random.default_rng(10)
    for n_words in (2, 3, 16, 500, 3_000):
        data = rng.integers(0, 256, 4 * n_words, dtype=np.uint8).tobytes()
        with pytest.raises(DcaeError):
            rans.decode_with_indexes(data, indexes, *tables.arrays)
    extreme = [b"\xff" * 64, b"\x00" * 64]
    for data in extreme:
        with pytest.raises(DcaeError):
            rans.decode_with_indexes(data, indexes, *tables.arrays)


def test_absurd_escape_count_is_rejected():
    # One table {0: half, escape: half}. A state whose low 16 bits pick the
    # escape and whose next 4 bits say 9 chunks (more than any encoder writes).
    cdfs = np.array([[0, 32768, 65536]], dtype=np.int32)
    lengths, offsets = np.array([3], np.int32), np.array([0], np.int32)
    state = (1 << 36) | (32768 + 9)
    data = state.to_bytes(8, "little") + bytes(64)
    with pytest.raises(CorruptStreamError, match="escape"):
        rans.decode_with_indexes(data, np.zeros(1, np.int32), cdfs, lengths, offsets)


def test_failed_decoder_stays_failed(tables):
    decoder = rans.RansStreamDecoder(bytes(8))
    with pytest.raises(CorruptStreamError):
        decoder.decode(np.zeros(10, np.int32), *tables.arrays)
    with pytest.raises(CorruptStreamError):
        decoder.decode(np.zeros(1, np.int32), *tables.arrays)
    with pytest.raises(CorruptStreamError):
        decoder.finish()


@pytest.mark.parametrize("bad_index", [-1, 64, 2**31 - 1])
def test_index_out_of_range(tables, bad_index):
    indexes = np.array([0, 5, bad_index, 3], dtype=np.int32)
    with pytest.raises(BadInputError, match="outside"):
        rans.encode_with_indexes(np.zeros(4, np.int32), indexes, *tables.arrays)
    data = rans.encode_with_indexes(np.zeros(4, np.int32), np.zeros(4, np.int32), *tables.arrays)
    with pytest.raises(BadInputError, match="outside"):
        rans.decode_with_indexes(data, indexes, *tables.arrays)


def test_invalid_tables_are_rejected(tables):
    symbols = indexes = np.zeros(3, np.int32)
    cdfs, lengths, offsets = tables.arrays
    flat = cdfs.copy()
    flat[7, 5] = flat[7, 4]  # a zero frequency
    unfinished = cdfs.copy()
    unfinished[3, lengths[3] - 1] = 65535
    for bad in [(flat, lengths, offsets), (unfinished, lengths, offsets),
                (cdfs, lengths + 10_000, offsets), (cdfs, lengths[:-1], offsets),
                (cdfs[0], lengths, offsets)]:
        with pytest.raises(BadInputError):
            rans.encode_with_indexes(symbols, indexes, *bad)
    with pytest.raises(BadInputError):
        rans.encode_with_indexes(symbols, indexes[:2], *tables.arrays)


# ----------------------------------------------------------------------------
# dcae_deploy.runtime.entropy
# ----------------------------------------------------------------------------

def test_build_indexes_matches_compressai(gaussian):
    table = gaussian.scale_table.numpy()
    rng = np.random.default_rng(11)
    scales = np.concatenate([
        np.exp(rng.uniform(np.log(0.01), np.log(1000), 20_000)),
        rng.normal(0, 1, 1_000),  # negative and tiny scales hit the lower bound
        table, np.nextafter(table, np.float32(np.inf)), np.nextafter(table, np.float32(0)),
        [0.0, -0.0, 0.11, np.inf, -np.inf, np.nan],
    ]).astype(np.float32).reshape(1, -1, 1, 1)
    expected = gaussian.build_indexes(torch.from_numpy(scales)).numpy()
    got = entropy.build_indexes(scales, table)
    assert got.dtype == np.int32 and got.shape == scales.shape
    np.testing.assert_array_equal(got, expected)


def test_quantize_and_dequantize_match_compressai(gaussian):
    rng = np.random.default_rng(12)
    y = rng.normal(0, 8, (1, 32, 6, 7)).astype(np.float32)
    y[:, :8] = np.round(y[:, :8] * 2) / 2  # exact halves: rounded to even
    means = rng.normal(0, 2, y.shape).astype(np.float32)
    means[:, :8] = 0
    expected = gaussian.quantize(torch.from_numpy(y), "symbols", torch.from_numpy(means)).numpy()
    symbols = entropy.quantize_symbols(y, means)
    np.testing.assert_array_equal(symbols, expected)
    restored = gaussian.dequantize(torch.from_numpy(symbols), torch.from_numpy(means)).numpy()
    np.testing.assert_array_equal(entropy.dequantize(symbols, means), restored)
    with pytest.raises(BadInputError):
        entropy.quantize_symbols(np.array([np.nan], np.float32), np.zeros(1, np.float32))


def bottleneck_tables(bottleneck):
    medians = bottleneck.quantiles[:, 0, 1].detach().numpy()
    return (medians, *Tables(bottleneck.quantized_cdf, bottleneck.cdf_length,
                             bottleneck.offset).arrays)


def test_entropy_bottleneck_matches_compressai():
    torch.manual_seed(0)
    bottleneck = EntropyBottleneck(192)
    with torch.no_grad():  # tables and medians that differ per channel
        bottleneck.quantiles += torch.randn_like(bottleneck.quantiles) * torch.tensor([2.0, 0.7, 2.0])
    bottleneck.update(force=True)
    medians, cdfs, lengths, offsets = bottleneck_tables(bottleneck)
    assert len(np.unique(lengths)) > 1 and len(np.unique(offsets)) > 1

    rng = np.random.default_rng(13)
    z = rng.normal(0, 4, (1, 192, 4, 6)).astype(np.float32)
    z[0, :, 0, 0] = 1e4  # escapes
    z[0, :, 1, 1] = -37.5
    expected = bottleneck.compress(torch.from_numpy(z))[0]
    data = entropy.compress_z(z, medians, cdfs, lengths, offsets)
    assert data == expected
    z_hat = entropy.decompress_z(data, (4, 6), medians, cdfs, lengths, offsets)
    assert z_hat.dtype == np.float32
    np.testing.assert_array_equal(z_hat, bottleneck.decompress([data], (4, 6)).numpy())
    with pytest.raises(CorruptStreamError):  # the wrong shape cannot end in sync
        entropy.decompress_z(data, (4, 5), medians, cdfs, lengths, offsets)


@pytest.mark.parametrize("name", ["seed0_256x256", "seed0_384x256"])
def test_golden_upstream_z_streams(name):
    """The z strings that upstream DCAE wrote decode identically and re-encode
    to the same bytes (tables from the golden weights' bottleneck)."""
    from dcae.golden import golden_param

    params = json.loads((GOLDEN / "dcae_params.json").read_text())
    prefix = "entropy_bottleneck."
    state = {name[len(prefix):]: torch.from_numpy(golden_param(name, shape, 0))
             for name, shape in params.items() if name.startswith(prefix)}
    bottleneck = EntropyBottleneck(192)
    bottleneck.load_state_dict(state, strict=False)
    bottleneck.update(force=True)
    tables = bottleneck_tables(bottleneck)

    shape = json.loads((GOLDEN / f"{name}.json").read_text())["z_shape"]
    data = (GOLDEN / f"{name}_z.bin").read_bytes()
    z_hat = entropy.decompress_z(data, shape, *tables)
    np.testing.assert_array_equal(z_hat, bottleneck.decompress([data], shape).numpy())
    assert entropy.compress_z(z_hat, *tables) == data


def test_runtime_modules_do_not_import_torch():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['compressai'] = None\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import dcae_deploy.runtime.rans, dcae_deploy.runtime.entropy\n"
        "assert not any(m.split('.')[0] in ('torch', 'compressai') and sys.modules[m] is not None"
        " for m in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
