"""Calibration images: a folder of photos -> deterministic crops the model accepts.

Crops are what the model sees at run time: `dcae_deploy.runtime.imaging.load_image` (the
runtime's own reader, so 16-bit, grayscale and palette images are handled
the same way) and `pad_image` (centred zero padding to a multiple of 128,
at least 256). Which image and which window each crop comes from depends
only on the sorted file list and the seed, never on the file system's order
or on how many crops were asked for before, so a crop set can be cached and
reproduced.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcae_deploy.runtime.errors import BadInputError
from dcae_deploy.runtime.geometry import padded_side
from dcae_deploy.runtime.imaging import load_image, pad_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DEFAULT_CROP = (256, 256)


@dataclass(frozen=True)
class Crop:
    source: str  # the image's path relative to the calibration folder
    top: int
    left: int
    pixels: np.ndarray  # uint8 (h, w, 3)

    def model_input(self) -> np.ndarray:
        """float32 (1, 3, H, W), padded exactly as the runtime pads an image."""
        return pad_image(self.pixels)[0]


def list_images(root: str | Path) -> list[Path]:
    """Every PNG/JPEG/TIFF file under `root` (recursive), sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise BadInputError(f"calibration folder not found: {root}")
    files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not files:
        raise BadInputError(f"no PNG/JPEG/TIFF images under {root}")
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def check_crop_size(size: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(s) for s in size)
    if padded_side(h) != h or padded_side(w) != w:
        raise ValueError(f"crop size {h}x{w}: each side must be a multiple of 128 and at least 256")
    return h, w


def files_fingerprint(files: list[Path], root: str | Path) -> str:
    """sha256 over relative path, size and mtime of each file: cheap, and it
    changes when an image is added, removed or rewritten."""
    digest = hashlib.sha256(b"dcae-calibration-files-v1")
    for path in files:
        st = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}|{st.st_size}|{st.st_mtime_ns};".encode())
    return digest.hexdigest()


def split_files(files: list[Path], holdout: int, seed: int) -> tuple[list[Path], list[Path]]:
    """(calibration files, held-out files): disjoint when there are at least two
    images, so the held-out error is measured on pictures calibration never saw.
    The held-out share is about 1 image in 5 (at least one)."""
    if holdout <= 0:
        return list(files), []
    if len(files) < 2:
        return list(files), list(files)
    order = np.random.default_rng([seed, 1]).permutation(len(files))
    n_held = min(len(files) - 1, max(1, round(len(files) / 5)))
    held = sorted(order[:n_held])
    calib = sorted(order[n_held:])
    return [files[i] for i in calib], [files[i] for i in held]


def sample_crops(files: list[Path], count: int, root: str | Path, size: tuple[int, int] = DEFAULT_CROP,
                 seed: int = 0, progress: bool = True, desc: str = "calibration crops") -> list[Crop]:
    """`count` crops of `size` (h, w), taken round-robin over `files` in a
    seeded order, each at a seeded position; an image smaller than the crop
    is used whole (padding then brings it to an accepted size). Each image is
    decoded once however many crops come from it."""
    from tqdm import tqdm

    if count < 1:
        raise ValueError(f"crop count must be at least 1, got {count}")
    if not files:
        raise BadInputError("no calibration images")
    ch, cw = check_crop_size(size)
    order = np.random.default_rng([seed, 0]).permutation(len(files))
    by_file: dict[int, list[int]] = {}
    for k in range(count):
        by_file.setdefault(int(order[k % len(files)]), []).append(k)
    crops: list[Crop | None] = [None] * count
    with tqdm(total=count, desc=desc, unit="crop", file=sys.stderr, disable=not progress, leave=False) as bar:
        for file_index in sorted(by_file):
            path = files[file_index]
            pixels = load_image(path)
            h, w = pixels.shape[:2]
            for k in by_file[file_index]:
                # one generator per crop: its window does not depend on the others
                u, v = np.random.default_rng([seed, 2, k]).random(2)
                top, left = int(u * (max(h - ch, 0) + 1)), int(v * (max(w - cw, 0) + 1))
                window = pixels[top : top + ch, left : left + cw]
                crops[k] = Crop(path.relative_to(root).as_posix(), top, left, np.ascontiguousarray(window))
                bar.update(1)
    return crops
