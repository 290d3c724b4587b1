"""The memory-saving paths of big images compute exactly what the whole-array
ones do: chunked portable passes, banded image conversions, symbols
decoded in place, and the slice graphs' outputs bound to numpy arrays (never
left in onnxruntime's arena)."""
from __future__ import annotations

import numpy as np
import pytest

from dcae_deploy.runtime import imaging, portable
from dcae_deploy.runtime.entropy import build_indexes
from dcae_deploy.runtime.portable import PortableDecoding, Thresholds, encode_portable
from dcae_deploy.runtime.rans import RansStreamDecoder, encode_with_indexes
from tests.test_portable import BOUND, TABLE, _scales_near_boundaries

def test_chunked_portable_passes_give_the_whole_latents_side_stream_and_indexes(monkeypatch):
    rng = np.random.default_rng(3)
    thresholds = Thresholds.from_table(TABLE, BOUND)
    margin = 1e-4
    scales = _scales_near_boundaries(rng, 16 * 24 * 32, 2e-2).reshape(1, 16, 24, 32)
    unshifted = build_indexes(scales, TABLE, BOUND)
    whole = encode_portable(scales, unshifted, thresholds, margin)
    assert whole.shifts.count > 1 and whole.listed > 0
    monkeypatch.setattr(portable, "CHUNK_ELEMENTS", 1000)  # 12 chunks, not on block or plane edges
    chunked = encode_portable(scales, unshifted, thresholds, margin)
    assert chunked.side == whole.side and chunked.listed == whole.listed
    assert np.array_equal(chunked.indexes, whole.indexes)
    in_place = unshifted.copy()
    shifted = encode_portable(scales, in_place, thresholds, margin, copy=False)
    assert shifted.indexes is in_place and np.array_equal(in_place, whole.indexes) and shifted.side == whole.side
    with pytest.raises(ValueError, match="in place"):
        encode_portable(scales, unshifted.astype(np.int64), thresholds, margin, copy=False)

    # The decoder, a slice at a time in chunks, gets the encoder's indexes.
    reader = PortableDecoding(whole.side, scales.size, thresholds, margin)
    slice_size = scales.size // 2
    for i in range(2):
        part = scales.reshape(-1)[i * slice_size : (i + 1) * slice_size]
        indexes = build_indexes(part, TABLE, BOUND)
        reader.apply(i * slice_size, part, indexes)
        assert np.array_equal(indexes, whole.indexes.reshape(-1)[i * slice_size : (i + 1) * slice_size])


@pytest.mark.parametrize("height, width", [(600, 333), (257, 300), (512, 768)])
def test_banded_image_conversions_equal_the_whole_array_expressions(height, width):
    rng = np.random.default_rng(height)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    x, pad = imaging.pad_image(pixels)
    reference = np.zeros_like(x)
    reference[0, :, pad.top : pad.top + height, pad.left : pad.left + width] = \
        pixels.transpose(2, 0, 1) / np.float32(255)
    assert x.dtype == np.float32 and np.array_equal(x, reference)
    x_hat = np.clip(rng.random(x.shape, dtype=np.float32) * 1.2 - 0.1, 0, 1)
    x_hat[0, :, pad.top, pad.left : pad.left + 3] = np.float32([0.5, 1.5, 2.5]) / np.float32(255)  # halves
    crop = x_hat[0, :, pad.top : pad.top + height, pad.left : pad.left + width]
    expected = np.clip(np.round(crop * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    got = imaging.crop_to_uint8(x_hat, height, width)
    assert got.dtype == np.uint8 and got.flags.c_contiguous and np.array_equal(got, expected)


def test_symbols_decode_into_a_given_array():
    rng = np.random.default_rng(1)
    cdfs = np.array([[0, 20000, 50000, 65536], [0, 1000, 64000, 65536]], np.int32)
    lengths, offsets = np.array([4, 4], np.int32), np.array([-1, 0], np.int32)
    indexes = rng.integers(0, 2, 500).astype(np.int32)
    symbols = rng.integers(-3, 5, 500).astype(np.int32)
    stream = encode_with_indexes(symbols, indexes, cdfs, lengths, offsets)
    out = np.full(600, 99, np.int32)
    decoder = RansStreamDecoder(stream)
    assert decoder.decode(indexes[:200], cdfs, lengths, offsets, out=out[:200]).base is out
    decoder.decode(indexes[200:], cdfs, lengths, offsets, out=out[200:500])
    decoder.finish()
    assert np.array_equal(out[:500], symbols) and np.all(out[500:] == 99)
    with pytest.raises(ValueError, match="int32"):
        RansStreamDecoder(stream).decode(indexes, cdfs, lengths, offsets, out=np.empty(500, np.int64))


def test_slice_graph_outputs_are_numpy_arrays_with_the_arena_runs_values(tiny_bundle):
    from dcae_deploy.runtime.backends import get_backend
    from dcae_deploy.runtime.bundle import Bundle

    bundle = Bundle.open(tiny_bundle)
    backend = get_backend("onnxruntime", threads=1)
    rng = np.random.default_rng(0)
    m, c, h, w = bundle.latent_channels, bundle.slice_channels, 12, 20
    inputs = {"latent_scales": rng.random((1, m, h, w), dtype=np.float32) + 0.1,
              "latent_means": rng.standard_normal((1, m, h, w), dtype=np.float32),
              "y_hat_prev": rng.standard_normal((1, c, h, w), dtype=np.float32)}
    session = backend.load(bundle.manifest.graphs["slice_params_1"], bundle.graph_path("slice_params_1"))
    got = session.run(inputs)
    plain = dict(zip(session.output_names, session._session.run(session.output_names, inputs)))
    for name, array in got.items():
        # Bound to an array of its own (the arena keeps nothing once the run shrinks it), and the same bits.
        assert array.flags.owndata and array.shape == plain[name].shape
        assert np.array_equal(array, plain[name])
    # h_s's output size is not its input's: it runs unbound, also with release.
    h_s = backend.load(bundle.manifest.graphs["h_s"], bundle.graph_path("h_s"))
    z_hat = rng.standard_normal((1, bundle.z_channels, 4, 8), dtype=np.float32)
    assert h_s._output_dims is None and session._output_dims is not None
    assert h_s.run({"z_hat": z_hat}, release_memory=True)["latent_scales"].shape == (1, m, 16, 32)
