"""The embedded default model: loads with no download, is the small preset,
and codes Kodak images at the rate and quality measured in
benchmarks/results/kodak_rd.json (written by dcae_deploy/bench/kodak_rd.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import dcae
from dcae.checkpoint import DEFAULT_CHECKPOINT
from dcae.metrics import bpp, psnr
from dcae_deploy.runtime.imaging import crop_to_uint8, pad_image

RESULTS = Path(__file__).parent.parent / "benchmarks" / "results" / "kodak_rd.json"
KODAK = Path(__file__).parent / "data" / "kodak"


@pytest.fixture(scope="module")
def fixture_model():
    return dcae.load_checkpoint()


@pytest.fixture(scope="module")
def measured():
    return {row["image"]: row for row in json.loads(RESULTS.read_text())["images"]}


def test_shipped_file_is_small_and_is_the_small_preset(fixture_model):
    assert DEFAULT_CHECKPOINT.stat().st_size < 30e6
    assert fixture_model.config == dcae.get_config("small")
    assert fixture_model.gaussian_conditional.quantized_cdf.numel() > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["kodim04.png", "kodim23.png"])
def test_kodak_round_trip_matches_the_measured_point(fixture_model, measured, name):
    from dcae_deploy.runtime.imaging import load_image

    pixels = load_image(KODAK / name)
    data = dcae.compress_image(fixture_model, pixels)
    decoded = dcae.decompress_image(fixture_model, data)
    h, w = pixels.shape[:2]
    row = measured[name]
    assert bpp(len(data) - 12, h, w) == pytest.approx(row["bpp"], rel=0.01)
    assert psnr(pixels, decoded) == pytest.approx(row["psnr-rgb"], abs=0.05)
    # the stream decodes bit-exactly: decompress equals forward() in eval mode
    x, _ = pad_image(pixels)
    with torch.no_grad():
        forward = fixture_model(torch.from_numpy(x))["x_hat"].clamp(0, 1).numpy()
    np.testing.assert_array_equal(decoded, crop_to_uint8(forward, h, w))
