import math

import numpy as np

from dcae.metrics import bpp, ms_ssim, psnr


def test_psnr_of_known_error():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a + 5
    assert math.isclose(psnr(a, b), 10 * math.log10(255**2 / 25))
    assert psnr(a, a) == float("inf")


def test_ms_ssim_ranks_real_degradation(kodak_image):
    noisy = np.clip(kodak_image.astype(int) + np.random.default_rng(0).integers(-20, 21, kodak_image.shape), 0, 255)
    assert ms_ssim(kodak_image, kodak_image) > 0.9999
    assert 0.5 < ms_ssim(kodak_image, noisy.astype(np.uint8)) < 0.99


def test_bpp_counts_bytes():
    assert bpp(1000, 100, 80) == 1.0
