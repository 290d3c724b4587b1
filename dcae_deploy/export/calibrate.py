"""Calibration, exporter side: run the reference over calibration crops and
record every graph's real inputs (this needs torch, so it lives here and not
in `calibration/`, which only ever sees numpy arrays).

The recording is what `dcae_deploy.export.reference_io` does for the export checks:
the slice graphs see y_hat decoded exactly as the codec decodes it, not a
training-time approximation. Recordings are cached on disk, keyed by the
model's weights and everything that picks the crops, so exporting the same
model again (another precision, another method) does not recollect.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from dcae_deploy.calibration import DEFAULT_METHOD
from dcae_deploy.calibration.cache import RecordCache, cache_key
from dcae_deploy.calibration.images import DEFAULT_CROP, Crop, files_fingerprint, list_images, sample_crops, split_files
from dcae_deploy.calibration.quantize import Int8Quantizer
from dcae.model import DCAE

from . import __version__
from .graphs import graph_definitions
from .reference_io import reference_graph_io

# Bump when the graph split changes what a graph's inputs are.
RECORDING_VERSION = 1


def model_fingerprint(model: DCAE) -> str:
    """sha256 over the config and every tensor of the state dict (names, dtypes,
    shapes, bytes): two models with this fingerprint export the same graphs."""
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}|{array.dtype}|{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def collect_graph_inputs(model: DCAE, crops: list[Crop], progress: bool = True,
                         desc: str = "recording graph inputs") -> list[dict]:
    """One record per crop: {graph name: {input name: float32 array}}."""
    from tqdm import tqdm

    definitions = graph_definitions(model.eval())
    records = []
    for crop in tqdm(crops, desc=desc, unit="crop", file=sys.stderr, disable=not progress, leave=False):
        io = reference_graph_io(model, definitions, crop.model_input())
        records.append({graph: entry["inputs"] for graph, entry in io.items()})
    return records


def recorded_inputs(model: DCAE, calib_dir: str | Path, count: int = 32, holdout: int = 4, seed: int = 0,
                    crop_size: tuple[int, int] = DEFAULT_CROP, cache_dir: str | Path | None = None,
                    progress=None) -> tuple[list[dict], list[dict], dict]:
    """(calibration records, held-out records, info). Held-out crops come from
    images calibration does not use (when the folder has two or more)."""
    say = progress or (lambda *a, **k: None)
    show_bars = progress is not None
    root = Path(calib_dir)
    files = list_images(root)
    calib_files, held_files = split_files(files, holdout, seed)
    info = {"calib_dir": str(root), "images": len(files), "calibration_images": len(calib_files),
            "heldout_images": len(held_files), "heldout_disjoint": not set(calib_files) & set(held_files),
            "seed": seed, "crop_size": list(crop_size)}
    cache = None
    if cache_dir is not None:
        key = cache_key(model=model_fingerprint(model), files=files_fingerprint(files, root), count=count,
                        holdout=holdout, seed=seed, crop=list(crop_size), recording=RECORDING_VERSION,
                        exporter=__version__)
        cache = RecordCache(cache_dir, key)
        calibration, heldout = cache.load("calibration"), cache.load("heldout")
        if calibration is not None and heldout is not None:
            say(f"calibration: {len(calibration)} + {len(heldout)} recorded crops from cache {cache.path}")
            return calibration, heldout, {**cache.info(), **info, "cache_hit": True, "cache_key": key}
    say(f"calibration: {count} crops from {len(calib_files)} images, {holdout} held-out crops "
        f"from {len(held_files)} images, under {root}")
    crops = sample_crops(calib_files, count, root, crop_size, seed, progress=show_bars)
    held_crops = sample_crops(held_files, holdout, root, crop_size, seed + 1, progress=show_bars,
                              desc="held-out crops") if holdout > 0 else []
    calibration = collect_graph_inputs(model, crops, progress=show_bars)
    heldout = collect_graph_inputs(model, held_crops, progress=show_bars, desc="recording held-out inputs")
    info["calibration_crop_list"] = [f"{c.source}@{c.top},{c.left}" for c in crops]
    info["heldout_crop_list"] = [f"{c.source}@{c.top},{c.left}" for c in held_crops]
    info["cache_hit"] = False
    if cache is not None:
        cache.save({"calibration": calibration, "heldout": heldout}, info)
        info["cache_key"] = cache.key
    return calibration, heldout, info


def make_int8_quantizer(model: DCAE, calib_dir: str | Path, count: int = 32, method: str = DEFAULT_METHOD,
                        holdout: int = 4, seed: int = 0, crop_size: tuple[int, int] = DEFAULT_CROP,
                        cache_dir: str | Path | None = None, progress=None, threads: int | None = 1,
                        target: str = "onnxruntime") -> Int8Quantizer:
    """The `quantize` hook for `export_bundle(..., precision="int8")`."""
    calibration, heldout, info = recorded_inputs(model, calib_dir, count, holdout, seed, crop_size, cache_dir,
                                                 progress)
    return Int8Quantizer(calibration, heldout, method=method, info=info, threads=threads, target=target)
