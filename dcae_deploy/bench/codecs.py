"""The image codecs people use today, at a quality setting, for rate-distortion
comparisons: JPEG, WebP and AVIF through Pillow, JPEG XL through the
pillow-jxl-plugin (libjxl). Each codes an RGB uint8 image to bytes and back.

Settings (recorded in every report through `describe()`):
- JPEG: Pillow's libjpeg, 4:2:0 chroma subsampling, quality 1..95;
- WebP: Pillow's libwebp, method 6 (slowest, best), quality 0..100;
- AVIF: Pillow's libavif (its default AV1 encoder), speed 4, quality 0..100;
- JPEG XL: libjxl through pillow-jxl-plugin, effort 7 (cjxl's default), quality
  5..95 (libjxl maps it to a Butteraugli distance; 100 would be lossless).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ImageCodec:
    name: str
    pil_format: str
    qualities: tuple[int, ...]  # the sweep, low to high
    options: dict = field(default_factory=dict)

    def encode(self, pixels: np.ndarray, quality: int) -> bytes:
        from PIL import Image

        if self.name == "JPEG XL":
            import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format=self.pil_format, quality=quality, **self.options)
        return buf.getvalue()

    @staticmethod
    def decode(data: bytes) -> np.ndarray:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))


CODECS = {
    "jpeg": ImageCodec("JPEG", "JPEG", tuple(range(5, 96, 5)), {"subsampling": 2}),
    "webp": ImageCodec("WebP", "WEBP", tuple(range(0, 101, 5)), {"method": 6}),
    "avif": ImageCodec("AVIF", "AVIF", tuple(range(0, 101, 5)), {"speed": 4}),
    "jxl": ImageCodec("JPEG XL", "JXL", tuple(range(5, 96, 5)), {"effort": 7}),  # 100: lossless, refused lossy
}


def unavailable_reason(key: str) -> str | None:
    """Why a codec cannot run here (None: it can)."""
    from PIL import features

    if key == "jxl":
        try:
            import pillow_jxl  # noqa: F401
        except ImportError:
            return "pillow-jxl-plugin is not installed"
        return None
    module = {"jpeg": "jpg", "webp": "webp", "avif": "avif"}[key]
    return None if features.check(module) else f"this Pillow has no {CODECS[key].name} support"


def describe(keys) -> dict:
    """Each codec's library version and settings, for a report."""
    from importlib.metadata import PackageNotFoundError, version

    from PIL import features

    def package(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    libraries = {"jpeg": f"libjpeg {features.version('jpg')} (Pillow {package('pillow')})",
                 "webp": f"libwebp {features.version('webp')} (Pillow {package('pillow')})",
                 "avif": f"libavif {features.version('avif')} (Pillow {package('pillow')})",
                 "jxl": f"pillow-jxl-plugin {package('pillow-jxl-plugin')} (libjxl)"}
    return {CODECS[k].name: {"library": libraries[k], "settings": CODECS[k].options,
                             "qualities": list(CODECS[k].qualities)} for k in keys}
