"""dcae_deploy.bench.codecs and rd_curves: the codecs people use, BD-rate, and a
bundle's curve over its quality knob against theirs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dcae_deploy.bench.codecs import CODECS, unavailable_reason
from dcae_deploy.bench.rd_curves import bd_rate, bd_rates, main, msssim_db, parse_codecs, parse_qualities


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


def test_bd_rate_of_a_curve_against_itself_and_at_scaled_rates():
    anchor = [(0.25, 28.0), (0.5, 31.0), (1.0, 34.0), (2.0, 37.0)]
    assert bd_rate(anchor, anchor) == pytest.approx(0.0, abs=1e-9)
    assert bd_rate(anchor, [(r / 2, q) for r, q in anchor]) == pytest.approx(-50.0, abs=1e-6)
    assert bd_rate(anchor, [(r * 0.9, q) for r, q in anchor]) == pytest.approx(-10.0, abs=1e-6)
    assert bd_rate(anchor, [(r * 1.1, q) for r, q in anchor]) == pytest.approx(10.0, abs=1e-6)
    assert bd_rate(anchor, [(0.1, 10.0), (0.2, 12.0)]) is None  # no common quality range
    assert bd_rate(anchor, [(0.5, 31.0)]) is None  # one point is no curve


def test_bd_rates_compare_psnr_and_msssim_in_db():
    curve = {"points": [{"bpp": b, "psnr": p, "ms_ssim": m}
                        for b, p, m in ((0.25, 28.0, 0.90), (0.5, 31.0, 0.95), (1.0, 34.0, 0.98), (2.0, 37.0, 0.99))]}
    cheaper = {"points": [dict(p, bpp=p["bpp"] * 0.9) for p in curve["points"]]}
    assert bd_rates(curve, curve) == pytest.approx({"psnr": 0.0, "ms_ssim": 0.0}, abs=1e-9)
    assert bd_rates(curve, cheaper) == pytest.approx({"psnr": -10.0, "ms_ssim": -10.0}, abs=1e-6)
    assert msssim_db(0.99) == pytest.approx(20.0) and msssim_db(None) is None and msssim_db(float("nan")) is None
    # MS-SSIM missing (images under 161 px a side): no MS-SSIM BD-rate, the PSNR one stands
    small = {"points": [dict(p, ms_ssim=None) for p in curve["points"]]}
    assert bd_rates(curve, small) == {"psnr": pytest.approx(0.0, abs=1e-9), "ms_ssim": None}


def test_qualities_and_codecs_are_parsed_and_checked():
    import argparse

    assert parse_qualities("80, 0,50,50,12.5") == [0, 12.5, 50, 80]
    for bad in ("101", "-1", "x", ","):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_qualities(bad)
    assert parse_codecs("webp,JPEG,webp") == ["webp", "jpeg"] and parse_codecs("none") == []
    with pytest.raises(argparse.ArgumentTypeError, match="unknown codec"):
        parse_codecs("jpeg,bpg")


@pytest.mark.slow
def test_report_gives_the_bundles_curve_over_its_qualities(tiny_bundle, tmp_path, kodak_crop):
    from PIL import Image

    from dcae_deploy.runtime import Codec

    images = tmp_path / "images"
    images.mkdir()
    pixels = kodak_crop("kodim23", 128, 128)
    Image.fromarray(pixels).save(images / "a.png")
    out = tmp_path / "out"
    assert main(["--images", str(images), "--bundle", str(tiny_bundle), "--qualities", "80,20,50", "--codecs", "jpeg",
                 "--threads", "1", "--out", str(out)]) == 0
    result = json.loads((out / "rd_curves.json").read_text())
    codec = Codec(tiny_bundle, threads=1)
    points = result["dcae"]["points"]
    assert [p["quality"] for p in points] == [20, 50, 80]
    for p in points:  # each point is the file Codec.encode writes at that quality
        data = codec.encode(pixels, quality=p["quality"]).data
        assert p["bpp"] == pytest.approx(8 * len(data) / pixels[..., 0].size)
        assert p["gain_code"] == codec.rate_levels.gain_code(p["quality"])
    assert points[1]["bpp"] == pytest.approx(8 * len(codec.compress(pixels)) / pixels[..., 0].size)  # 50: default
    assert points[0]["bpp"] < points[1]["bpp"] < points[2]["bpp"]
    assert set(result["bd_rate"]) == {"JPEG"} and set(result["bd_rate"]["JPEG"]) == {"psnr", "ms_ssim"}
    assert set(result["against"]) == {"20", "50", "80"}
    jpeg = result["curves"]["jpeg"]["points"]
    assert [p["setting"] for p in jpeg] == list(CODECS["jpeg"].qualities)
    text = (out / "rd_curves.md").read_text()
    assert (out / "rd_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## BD-rate of DCAE against each codec" in text and "libjpeg" in text
    assert "Command: `python -m dcae_deploy.bench.rd_curves --images" in text and "CPU: " in text
    assert result["created"] and result["cpu"]
    # One quality: the bundle's reference rate as a single point
    single = tmp_path / "single"
    assert main(["--images", str(images), "--bundle", str(tiny_bundle), "--qualities", "50", "--codecs", "jpeg",
                 "--threads", "1", "--out", str(single)]) == 0
    result = json.loads((single / "rd_curves.json").read_text())
    [point] = result["dcae"]["points"]
    assert point["bpp"] == pytest.approx(points[1]["bpp"])
    assert result["bd_rate"]["JPEG"] == {"psnr": None, "ms_ssim": None}
    assert main(["--images", str(tmp_path / "none"), "--codecs", "jpeg"]) == 2

    # The codecs' curves of the first run, taken again instead of measured: the same
    # curves and BD-rates, the first run named in the report
    again = tmp_path / "again"
    assert main(["--images", str(images), "--bundle", str(tiny_bundle), "--qualities", "80,20,50", "--codecs", "jpeg",
                 "--codec-curves", str(out / "rd_curves.json"), "--threads", "1", "--out", str(again)]) == 0
    reused = json.loads((again / "rd_curves.json").read_text())
    first = json.loads((out / "rd_curves.json").read_text())
    assert reused["curves"] == first["curves"] and reused["bd_rate"] == first["bd_rate"]
    assert reused["codecs"] == first["codecs"] and "codec curves from" in (again / "rd_curves.md").read_text()
    # and DCAE's curve too: one report of the earlier runs' curves, nothing coded
    merged = tmp_path / "merged"
    assert main(["--images", str(images), "--codecs", "jpeg", "--codec-curves", str(out / "rd_curves.json"),
                 "--dcae-curve", str(again / "rd_curves.json"), "--out", str(merged)]) == 0
    merged = json.loads((merged / "rd_curves.json").read_text())
    assert merged["dcae"] == first["dcae"] and merged["bd_rate"] == first["bd_rate"]
    assert main(["--images", str(images), "--codecs", "jpeg", "--bundle", str(tiny_bundle),
                 "--dcae-curve", str(again / "rd_curves.json")]) == 2
    # ... only from a run on the same images, with the codecs asked for
    Image.fromarray(kodak_crop("kodim05", 128, 128)).save(images / "b.png")
    assert main(["--images", str(images), "--codecs", "jpeg", "--codec-curves", str(out / "rd_curves.json")]) == 2
    (images / "b.png").unlink()
    assert main(["--images", str(images), "--codecs", "webp", "--codec-curves", str(out / "rd_curves.json")]) == 2
    assert main(["--images", str(images), "--codecs", "jpeg", "--codec-curves", str(images / "a.png")]) == 2


def test_rd_compare_puts_two_runs_side_by_side_with_the_bd_rate(tmp_path, capsys):
    import json

    from dcae_deploy.bench.rd_compare import main

    def run(scale: float) -> dict:
        points = [{"quality": q, "bpp": bpp * scale, "psnr": psnr, "ms_ssim": 1 - 10 ** (-psnr / 20)}
                  for q, bpp, psnr in ((0, 0.1, 24.0), (50, 0.6, 31.0), (100, 1.5, 33.0))]
        return {"images": 2, "images_dir": "kodak", "image_names": ["a.png", "b.png"],
                "dcae": {"bundle": f"b{scale}", "points": points}}

    for name, scale in (("base", 1.0), ("other", 0.9)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "rd_curves.json").write_text(json.dumps(run(scale)))
    out = tmp_path / "compare.md"
    assert main([str(tmp_path / "base" / "rd_curves.json"), str(tmp_path / "other" / "rd_curves.json"),
                 "--out", str(out)]) == 0
    text = out.read_text()
    assert "PSNR -10.0 %, MS-SSIM (dB) -10.0 %" in text
    assert "[base/rd_curves.md](base/rd_curves.md)" in text and "| 50 | 0.600 | 31.00 |" in text
