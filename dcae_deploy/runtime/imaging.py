"""Turning what users pass as an image into a uint8 H x W x 3 array.

Accepts a path, a PIL image or a numpy array. Grayscale and palette images
become RGB, RGBA drops its alpha (with a warning), 16-bit images are scaled to
8 bits; anything else (NaN, float, wrong rank, too many pixels) is a
`BadInputError` with a one-line reason. The pixel limit is checked from the
file header before the pixels are decoded.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .errors import BadInputError
from .geometry import check_dimensions


def _from_pil(img) -> np.ndarray:
    from PIL import Image

    check_dimensions(img.height, img.width)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(np.round(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        raise BadInputError("floating-point images are not supported; convert to 8-bit RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        warnings.warn("image has an alpha channel; it is dropped", stacklevel=3)
    if mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def _from_array(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise BadInputError(f"image array must be H x W or H x W x C, got shape {arr.shape}")
    check_dimensions(arr.shape[0], arr.shape[1])
    channels = arr.shape[2]
    if channels == 4:
        warnings.warn("image has an alpha channel; it is dropped", stacklevel=3)
        arr = arr[:, :, :3]
    elif channels == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif channels != 3:
        raise BadInputError(f"image must have 1, 3 or 4 channels, got {channels}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.uint16:
        return np.round(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    raise BadInputError(f"image array must be uint8 or uint16, got {arr.dtype}")


def load_image(image) -> np.ndarray:
    """Path / PIL image / array -> contiguous uint8 array of shape (H, W, 3)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, np.ndarray):
        return _from_array(image)
    if isinstance(image, Image.Image):
        return _from_pil(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if path.is_dir():
            raise BadInputError(f"{path} is a directory, not an image")
        if not path.is_file():
            raise BadInputError(f"no such file: {path}")
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # our own limit is checked from the header below
        try:
            with Image.open(path) as img:
                check_dimensions(img.height, img.width)
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                img.load()
                return _from_pil(img)
        except UnidentifiedImageError:
            raise BadInputError(f"{path} is not an image file Pillow can read") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise BadInputError(f"{path}: cannot decode image ({exc})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    raise BadInputError(f"expected a path, PIL image or numpy array, got {type(image).__name__}")


# Rows converted at a time between the uint8 image and the float tensor: the
# temporaries stay a band's size (a few MB) whatever the image's.
BAND_ROWS = 256


def _row_bands(height: int):
    for start in range(0, height, BAND_ROWS):
        yield start, min(start + BAND_ROWS, height)


def pad_image(pixels: np.ndarray) -> tuple[np.ndarray, "Padding"]:
    """uint8 (H, W, 3) -> float32 (1, 3, Hp, Wp) in [0, 1], centred zero padding."""
    from .geometry import padding_for

    h, w = pixels.shape[:2]
    pad = padding_for(h, w)
    x = np.zeros((1, 3, h + pad.top + pad.bottom, w + pad.left + pad.right), np.float32)
    # Band by band (the same element-wise arithmetic): no float temporary of the whole image.
    for start, stop in _row_bands(h):
        x[0, :, pad.top + start : pad.top + stop, pad.left : pad.left + w] = \
            pixels[start:stop].transpose(2, 0, 1) / np.float32(255)
    return x, pad


def crop_to_uint8(x_hat: np.ndarray, height: int, width: int) -> np.ndarray:
    """float (1, 3, Hp, Wp) in [0, 1] -> uint8 (H, W, 3), undoing `pad_image`."""
    from .geometry import padding_for

    pad = padding_for(height, width)
    out = np.empty((height, width, 3), np.uint8)
    # Band by band: round(x * 255) clipped to [0, 255], as one expression on
    # the whole crop would compute it, without its three float copies.
    for start, stop in _row_bands(height):
        band = x_hat[0, :, pad.top + start : pad.top + stop, pad.left : pad.left + width] * 255.0
        np.round(band, out=band)
        np.clip(band, 0, 255, out=band)
        out[start:stop] = band.astype(np.uint8).transpose(1, 2, 0)
    return out


def save_image(pixels: np.ndarray, path: str | Path) -> None:
    """Write a uint8 (H, W, 3) array as PNG (or the format the suffix names), atomically."""
    import io

    from PIL import Image

    from .fileio import write_atomically

    path = Path(path)
    buf = io.BytesIO()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}.get(path.suffix.lower(), "PNG")
    Image.fromarray(pixels).save(buf, format=fmt)
    write_atomically(path, buf.getbuffer())  # (a view: no second copy of the encoded file)
