"""Image-level coding with the reference: any size, upstream .bin format,
input conversions and refusals."""
from __future__ import annotations

import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import dcae
from dcae_deploy.runtime.errors import BadInputError
from dcae_deploy.runtime.imaging import crop_to_uint8, load_image, pad_image


@pytest.mark.slow
@pytest.mark.parametrize("size", [(1, 1), (17, 300), (129, 257), (512, 768)])
def test_round_trip_any_size_equals_forward(small_random_model, kodak_image, size):
    h, w = size
    image = kodak_image[:h, :w]
    data = dcae.compress_image(small_random_model, image)
    # upstream .bin header: original size, big-endian
    assert struct.unpack(">HH", data[:4]) == (h, w)
    decoded = dcae.decompress_image(small_random_model, data)
    assert decoded.shape == (h, w, 3) and decoded.dtype == np.uint8
    # decompress equals forward() in eval mode, so padding/cropping are right
    x, _ = pad_image(image)
    with torch.no_grad():
        expected = small_random_model(torch.from_numpy(x))["x_hat"].clamp(0, 1).numpy()
    np.testing.assert_array_equal(decoded, crop_to_uint8(expected, h, w))


def test_batch_above_one_is_refused(small_random_model):
    with pytest.raises(ValueError, match="batch 1"):
        small_random_model.compress(torch.zeros(2, 3, 256, 256))


def test_unpadded_size_is_refused(small_random_model):
    with pytest.raises(ValueError, match="multiples of 128"):
        small_random_model.compress(torch.zeros(1, 3, 128, 256))


def test_grayscale_and_palette_become_rgb(kodak_image):
    gray = Image.fromarray(kodak_image).convert("L")
    out = load_image(gray)
    assert out.shape == (512, 768, 3) and (out[..., 0] == out[..., 2]).all()
    pal = Image.fromarray(kodak_image).convert("P")
    assert load_image(pal).shape == (512, 768, 3)
    assert load_image(np.asarray(gray)).shape == (512, 768, 3)


def test_rgba_drops_alpha_with_warning(kodak_image):
    rgba = np.dstack([kodak_image, np.full(kodak_image.shape[:2], 7, np.uint8)])
    with pytest.warns(UserWarning, match="alpha"):
        out = load_image(rgba)
    np.testing.assert_array_equal(out, kodak_image)
    with pytest.warns(UserWarning, match="alpha"):
        load_image(Image.fromarray(rgba, "RGBA"))


def test_16bit_is_scaled(tmp_path):
    arr16 = np.array([[0, 65535], [257 * 100, 257 * 200]], np.uint16)
    out = load_image(arr16)
    assert out[..., 0].tolist() == [[0, 255], [100, 200]]
    path = tmp_path / "g16.png"
    Image.fromarray(arr16).save(path)
    assert load_image(path)[..., 1].tolist() == [[0, 255], [100, 200]]


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((4, 4, 3), np.nan, np.float32), "uint8 or uint16"),
        (np.zeros((4, 4, 3), np.int64), "uint8 or uint16"),
        (np.zeros((4, 4, 2), np.uint8), "1, 3 or 4 channels"),
        (np.zeros((2, 4, 4, 3), np.uint8), "H x W"),
        (np.zeros((0, 4, 3), np.uint8), "empty side"),
        ("definitely/not/here.png", "no such file"),
        (3.5, "expected a path"),
    ],
)
def test_bad_inputs_give_one_line_errors(bad, message):
    with pytest.raises(BadInputError, match=message) as info:
        load_image(bad)
    assert "\n" not in str(info.value)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a size; its pixel data is absent."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_huge_dimensions_are_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(60000, 60000))
    with pytest.raises(BadInputError, match="pixels, over the limit"):
        load_image(path)


def test_directory_and_non_image_files(tmp_path):
    with pytest.raises(BadInputError, match="directory"):
        load_image(tmp_path)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"hello")
    with pytest.raises(BadInputError, match="not an image"):
        load_image(junk)


def test_reference_has_no_hard_coded_device():
    from pathlib import Path

    for path in Path(dcae.__file__).parent.glob("*.py"):
        assert ".cuda()" not in path.read_text(), path


@pytest.mark.slow
def test_portable_files_carry_the_models_own_margin(tiny_model, kodak_crop):
    """`format="dcae"` writes the model's margin (`dcae.margin.model_margin`),
    computed once per model object, the same when computed again; a number
    overrides it; the embedded model's is 4.7e-5, just over the floor
    (docs/portable.md, "How δ is chosen")."""
    from dcae import load_checkpoint
    from dcae.golden import golden_model
    from dcae.margin import margin_record, model_margin
    from dcae_deploy.runtime.container import unpack
    from dcae_deploy.runtime.portable import DEFAULT_MARGIN

    pixels = kodak_crop("kodim03", 64, 96)
    margin = model_margin(tiny_model)
    record = margin_record(tiny_model)
    assert margin == record["margin"] > DEFAULT_MARGIN  # the golden weights stray farther than the floor covers
    assert margin_record(golden_model("tiny", seed=0)) == record  # another object, computed again: the same
    data = dcae.compress_image(tiny_model, pixels, format="dcae")
    assert unpack(data).header.margin == np.float32(margin)
    data = dcae.compress_image(tiny_model, pixels, format="dcae", margin=2 * margin)
    assert unpack(data).header.margin == np.float32(2 * margin)
    with pytest.raises(BadInputError, match="margin must be a number or 'model'"):
        dcae.compress_image(tiny_model, pixels, format="dcae", margin="wide")
    assert model_margin(load_checkpoint()) == 4.7e-5 > DEFAULT_MARGIN
