"""Image-size rules shared by the reference and the runtime.

The model downsamples by 64 overall and runs window-4 attention at 1/32
scale, so each padded side must be a multiple of 128; the window-attention
blocks also fail at exactly 128 (see UPSTREAM.md 3.1), so the minimum padded
side is 256. Padding is centred zero padding, as upstream's `pad(x, 128)`.
"""
from __future__ import annotations

from typing import NamedTuple

PAD_MULTIPLE = 128
MIN_PADDED_SIDE = 256
# Largest side the upstream `.bin` header can hold (uint16), and a pixel limit
# that keeps the W-MSA activations of the official model within a few GB.
MAX_SIDE = 65535
MAX_PIXELS = 8192 * 8192
Z_DOWNSAMPLE = 64
Y_DOWNSAMPLE = 16


class Padding(NamedTuple):
    left: int
    right: int
    top: int
    bottom: int


def padded_side(side: int) -> int:
    """The padded length of one side: a multiple of 128, at least 256."""
    rounded = -(-side // PAD_MULTIPLE) * PAD_MULTIPLE
    return max(MIN_PADDED_SIDE, rounded)


def padded_size(height: int, width: int) -> tuple[int, int]:
    return padded_side(height), padded_side(width)


def padding_for(height: int, width: int) -> Padding:
    """Centred padding (left gets the smaller half), as upstream's `pad()`."""
    ph, pw = padded_size(height, width)
    left = (pw - width) // 2
    top = (ph - height) // 2
    return Padding(left, pw - width - left, top, ph - height - top)


def z_shape_for(height: int, width: int) -> tuple[int, int]:
    ph, pw = padded_size(height, width)
    return ph // Z_DOWNSAMPLE, pw // Z_DOWNSAMPLE


def check_dimensions(height: int, width: int) -> None:
    """Refuse sizes the codec cannot represent, before anything is allocated."""
    from .errors import BadInputError

    if height < 1 or width < 1:
        raise BadInputError(f"image has an empty side ({height}x{width})")
    if height > MAX_SIDE or width > MAX_SIDE:
        raise BadInputError(f"image side over {MAX_SIDE} px ({height}x{width})")
    if height * width > MAX_PIXELS:
        raise BadInputError(
            f"image has {height * width} pixels, over the limit of {MAX_PIXELS} ({height}x{width})"
        )
