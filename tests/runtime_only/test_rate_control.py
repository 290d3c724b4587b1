"""The quality knob on the embedded model (no torch): rate and distortion
follow the quality on real photos, rate control meets its targets, and the
command line takes --quality, --target-bpp and --max-bytes."""
from __future__ import annotations

import numpy as np
import pytest

from dcae_deploy.runtime.container import unpack
from dcae_deploy.runtime.errors import BadInputError
from dcae_deploy.runtime.metrics import psnr
from dcae_deploy.runtime.quality import TARGET_TOLERANCE

from .test_runtime_only_cli import assert_one_line_error, files_in, run_dcae

# Two photos of different content, cropped to keep the sweep short.
CROPS = [("kodim23", 256, 384, 100, 200), ("kodim13", 256, 384, 0, 0)]


@pytest.mark.slow
@pytest.mark.parametrize("crop", CROPS, ids=[c[0] for c in CROPS])
def test_rate_and_distortion_grow_with_the_quality(codec, kodak, crop):
    pixels = kodak(*crop)
    sizes, quality_db = [], []
    for quality in range(0, 101, 10):
        result = codec.encode(pixels, quality=quality)
        decoded = codec.decompress(result.data)
        assert np.array_equal(codec.decode(result.data, synthesize=False).symbols, result.symbols.reshape(-1))
        sizes.append(len(result.data))
        quality_db.append(psnr(pixels, decoded))
    assert all(b > a for a, b in zip(sizes, sizes[1:])), sizes
    # The embedded model's levels are trained (docs/quality.md): every step
    # up gains quality, the ends past the trained levels included.
    assert all(b > a for a, b in zip(quality_db, quality_db[1:])), quality_db
    assert sizes[5] == len(codec.compress(pixels))  # quality 50 is the default


@pytest.mark.slow
@pytest.mark.parametrize("crop", CROPS, ids=[c[0] for c in CROPS])
def test_rate_control_meets_its_targets_on_photos(codec, kodak, crop):
    pixels = kodak(*crop)
    height, width = pixels.shape[:2]
    for max_bytes in (3000, 6000, 12000):
        data = codec.compress(pixels, max_bytes=max_bytes)
        assert max_bytes * (1 - TARGET_TOLERANCE) <= len(data) <= max_bytes
        assert len(codec.last_rate_search.tries) <= 6
    for bpp in (0.25, 0.6, 1.0):
        data = codec.compress(pixels, target_bpp=bpp)
        assert bpp * (1 - TARGET_TOLERANCE) <= 8 * len(data) / (height * width) <= bpp
    # the lowest gain rate control reaches: at or below quality 0's
    low_code = codec.rate_levels.code_range()[0]
    assert low_code <= codec.rate_levels.gain_code(0)
    smallest = len(codec.code(codec.analyse(pixels), low_code).data)
    with pytest.raises(BadInputError) as info:
        codec.compress(pixels, max_bytes=10)
    assert f"the smallest file this image codes to is {smallest} bytes" in str(info.value)


def test_command_line_rate_options(bundle, kodak, tmp_path):
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.fromarray(kodak("kodim23", 128, 192, 200, 300)).save(photo)
    done = run_dcae("compress", photo, "-o", tmp_path / "q30.dcae", "-b", bundle, "--quality", "30")
    assert done.returncode == 0, done.stderr
    header = unpack((tmp_path / "q30.dcae").read_bytes()).header
    from dcae_deploy.runtime import Codec

    levels = Codec(bundle).rate_levels
    assert levels.reach > 0  # the embedded model's trained levels, not the untrained rule
    assert header.gain_code == levels.gain_code(30) != 4096
    done = run_dcae("decompress", tmp_path / "q30.dcae", "-o", tmp_path / "q30.png", "-b", bundle)
    assert done.returncode == 0, done.stderr

    done = run_dcae("compress", photo, "-o", tmp_path / "cap.dcae", "-b", bundle, "--max-bytes", "2000")
    assert done.returncode == 0, done.stderr
    assert 2000 * (1 - TARGET_TOLERANCE) <= (tmp_path / "cap.dcae").stat().st_size <= 2000
    assert "tries" in done.stdout

    out = tmp_path / "out"
    out.mkdir()
    error = assert_one_line_error(run_dcae("compress", photo, "-o", out / "x.dcae", "-b", bundle,
                                           "--max-bytes", "10"))
    assert "--max-bytes 10 is out of reach: the smallest file this image codes to is" in error
    for bad in (["--quality", "101"], ["--target-bpp", "0"], ["--quality", "20", "--max-bytes", "900"]):
        done = run_dcae("compress", photo, "-o", out / "x.dcae", "-b", bundle, *bad)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert files_in(out) == []
