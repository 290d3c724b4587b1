"""dcae_deploy.bench.codecs and rd_curves: the codecs people use, BD-rate, and a
bundle placed against their curves."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dcae_deploy.bench.codecs import CODECS, unavailable_reason
from dcae_deploy.bench.rd_curves import bd_rate, main


@pytest.mark.parametrize("key", list(CODECS))
def test_each_codec_round_trips_and_rate_rises_with_quality(key, kodak_crop):
    if reason := unavailable_reason(key):
        pytest.skip(reason)
    from dcae.metrics import psnr

    codec = CODECS[key]
    pixels = kodak_crop("kodim05", 128, 192)
    low, high = codec.qualities[2], codec.qualities[-3]
    small, large = codec.encode(pixels, low), codec.encode(pixels, high)
    assert len(small) < len(large)
    decoded = codec.decode(large)
    assert decoded.shape == pixels.shape and decoded.dtype == np.uint8
    assert psnr(pixels, decoded) > psnr(pixels, codec.decode(small)) > 18


def test_bd_rate_of_a_curve_against_itself_and_at_half_the_rate():
    anchor = [(0.25, 28.0), (0.5, 31.0), (1.0, 34.0), (2.0, 37.0)]
    assert bd_rate(anchor, anchor) == pytest.approx(0.0, abs=1e-9)
    assert bd_rate(anchor, [(r / 2, q) for r, q in anchor]) == pytest.approx(-50.0, abs=1e-6)
    assert bd_rate(anchor, [(r * 1.1, q) for r, q in anchor]) == pytest.approx(10.0, abs=1e-6)
    assert bd_rate(anchor, [(0.1, 10.0), (0.2, 12.0)]) is None  # no common quality range


def test_report_places_a_bundle_against_the_curves(tiny_bundle, tmp_path, kodak_crop):
    from PIL import Image

    from dcae_deploy.runtime import Codec

    images = tmp_path / "images"
    images.mkdir()
    pixels = kodak_crop("kodim23", 128, 128)
    Image.fromarray(pixels).save(images / "a.png")
    bundle = tiny_bundle
    out = tmp_path / "out"
    assert main(["--images", str(images), "--bundle", str(bundle), "--codecs", "jpeg", "--out", str(out)]) == 0
    result = json.loads((out / "rd_curves.json").read_text())
    data = Codec(bundle).compress(pixels)
    assert result["dcae"]["bpp"] == pytest.approx(8 * len(data) / pixels[..., 0].size)
    jpeg = result["curves"]["jpeg"]["points"]
    assert [p["setting"] for p in jpeg] == list(CODECS["jpeg"].qualities)
    assert (out / "rd_curves.png").stat().st_size > 0 and "JPEG" in (out / "rd_curves.md").read_text()
    assert main(["--images", str(tmp_path / "none"), "--codecs", "jpeg"]) == 2
