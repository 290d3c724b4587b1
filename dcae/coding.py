"""Image-level coding with the PyTorch reference, in upstream's `.bin` format.

`compress_image` accepts any image the runtime's loader accepts (path, PIL,
array; grayscale, palette, RGBA, 16-bit), pads it to the model's size rule,
codes it with `DCAE.compress`, and writes upstream's `.bin` layout, so files
from the upstream scripts decode here and ours decode there.
"""
from __future__ import annotations

import numpy as np
import torch

from runtime.container import pack_bin, unpack_bin
from runtime.geometry import z_shape_for
from runtime.imaging import crop_to_uint8, load_image, pad_image

from .model import DCAE


def _device_of(model: DCAE) -> torch.device:
    return next(model.parameters()).device


def compress_image(model: DCAE, image) -> bytes:
    """Image -> upstream `.bin` bytes."""
    pixels = load_image(image)
    height, width = pixels.shape[:2]
    x, _ = pad_image(pixels)
    out = model.compress(torch.from_numpy(x).to(_device_of(model)))
    return pack_bin(height, width, out["strings"][0][0], out["strings"][1][0])


def decompress_image(model: DCAE, data: bytes) -> np.ndarray:
    """Upstream `.bin` bytes -> uint8 (H, W, 3)."""
    parsed = unpack_bin(bytes(data))
    x_hat = model.decompress([[parsed.y], [parsed.z]], z_shape_for(parsed.height, parsed.width))["x_hat"]
    return crop_to_uint8(x_hat.float().cpu().numpy(), parsed.height, parsed.width)
