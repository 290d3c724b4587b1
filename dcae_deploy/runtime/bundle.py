"""Opening a bundle directory: manifest, file integrity, entropy tables.

`Bundle.open(path)` trusts nothing: every graph file and the entropy tables
must exist and hash to what the manifest says, each graph must have the
tensor names of the contract in `dcae_deploy.runtime.manifest`, and the tables must be
valid rANS tables. Any problem is a `BundleError` naming the file, raised
before a backend loads anything.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, fields
from pathlib import Path, PurePath

import numpy as np

from .errors import BadInputError, BundleError
from .manifest import ENTROPY_ARRAYS, MANIFEST_NAME, Manifest, graph_order, sha256_file


def graph_io_names(name: str) -> tuple[list[str], list[str]]:
    """The input and output tensor names each graph must have (the contract
    in `dcae_deploy.runtime.manifest`'s docstring), which the codec feeds by."""
    if name == "g_a":
        return ["x"], ["y"]
    if name == "h_a":
        return ["y"], ["z"]
    if name == "h_s":
        return ["z_hat"], ["latent_scales", "latent_means"]
    if name == "slice_params_0":
        return ["latent_scales", "latent_means"], ["mu", "scale", "support"]
    if name.startswith("slice_params_"):
        return ["latent_scales", "latent_means", "y_hat_prev"], ["mu", "scale", "support"]
    if name.startswith("slice_lrp_"):
        return ["support", "y_hat_raw"], ["y_hat"]
    if name == "g_s":
        return ["y_hat"], ["x_hat"]
    raise KeyError(name)


@dataclass(frozen=True)
class EntropyTables:
    """entropy.npz as typed arrays (field names are `ENTROPY_ARRAYS`)."""

    gaussian_scale_table: np.ndarray  # float32 (L,), ascending
    gaussian_scale_bound: np.ndarray  # float32 ()
    gaussian_cdfs: np.ndarray  # int32 (L, Lmax)
    gaussian_cdf_lengths: np.ndarray  # int32 (L,)
    gaussian_offsets: np.ndarray  # int32 (L,)
    z_medians: np.ndarray  # float32 (Z,)
    z_cdfs: np.ndarray  # int32 (Z, Lz)
    z_cdf_lengths: np.ndarray  # int32 (Z,)
    z_offsets: np.ndarray  # int32 (Z,)

    @property
    def gaussian(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cdfs, cdf_lengths, offsets) in the order the rANS coder takes them."""
        return self.gaussian_cdfs, self.gaussian_cdf_lengths, self.gaussian_offsets

    @property
    def z(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(medians, cdfs, cdf_lengths, offsets) as compress_z / decompress_z take them."""
        return self.z_medians, self.z_cdfs, self.z_cdf_lengths, self.z_offsets


_FLOAT_ARRAYS = ("gaussian_scale_table", "gaussian_scale_bound", "z_medians")
assert tuple(f.name for f in fields(EntropyTables)) == ENTROPY_ARRAYS


def _typed(name: str, array: np.ndarray, file: str) -> np.ndarray:
    if name in _FLOAT_ARRAYS:
        if array.dtype.kind != "f":
            raise BundleError(f"bundle {file}: {name} must be float, got {array.dtype}")
        return np.array(array, dtype=np.float32, order="C")  # (ascontiguousarray makes 0-d 1-d)
    if array.dtype.kind not in "iu":
        raise BundleError(f"bundle {file}: {name} must be integer, got {array.dtype}")
    if array.size and (array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max):
        raise BundleError(f"bundle {file}: {name} holds values outside int32")
    return np.array(array, dtype=np.int32, order="C")


def _check_tables(tables: EntropyTables, z_channels: int, file: str) -> None:
    from .rans import _checked_tables  # the coder's own table checks, run once here

    t = tables
    if t.gaussian_scale_table.ndim != 1 or t.gaussian_scale_table.size < 2:
        raise BundleError(f"bundle {file}: gaussian_scale_table must be 1-D with at least 2 scales")
    if not np.all(np.diff(t.gaussian_scale_table) > 0) or not np.all(np.isfinite(t.gaussian_scale_table)):
        raise BundleError(f"bundle {file}: gaussian_scale_table must be finite and ascending")
    if t.gaussian_scale_bound.shape != () or not np.isfinite(t.gaussian_scale_bound):
        raise BundleError(f"bundle {file}: gaussian_scale_bound must be one finite number")
    if t.gaussian_cdfs.ndim != 2 or t.gaussian_cdfs.shape[0] != t.gaussian_scale_table.size:
        raise BundleError(f"bundle {file}: gaussian_cdfs must have one row per scale "
                          f"({t.gaussian_scale_table.size}), got shape {t.gaussian_cdfs.shape}")
    if t.z_medians.shape != (z_channels,) or not np.all(np.isfinite(t.z_medians)):
        raise BundleError(f"bundle {file}: z_medians must be {z_channels} finite values, "
                          f"got shape {t.z_medians.shape}")
    if t.z_cdfs.ndim != 2 or t.z_cdfs.shape[0] != z_channels:
        raise BundleError(f"bundle {file}: z_cdfs must have one row per z channel ({z_channels}), "
                          f"got shape {t.z_cdfs.shape}")
    for prefix, cdfs, lengths, offsets in (("gaussian", *t.gaussian), ("z", t.z_cdfs, t.z_cdf_lengths, t.z_offsets)):
        try:
            _checked_tables(cdfs, lengths, offsets)
        except BadInputError as exc:
            raise BundleError(f"bundle {file}: {prefix} tables are not valid rANS tables ({exc})") from None


def _member(bundle_dir: Path, file, what: str) -> Path:
    # The manifest names files inside the bundle; never follow it elsewhere.
    parts = PurePath(file).parts if isinstance(file, str) else ()
    if len(parts) != 1 or parts[0] in (".", ".."):
        raise BundleError(f"manifest names {what} file {file!r}, not a file in the bundle directory")
    return bundle_dir / file


def _read_manifest(path: Path) -> Manifest:
    try:
        return Manifest.read(path)
    except BundleError:
        raise
    except OSError as exc:
        raise BundleError(f"bundle {MANIFEST_NAME} cannot be read ({exc.strerror})") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # Manifest.read reports what it checks; a manifest malformed in a way
        # it does not check (a non-UTF-8 file, a config without num_slices)
        # ends up here.
        raise BundleError(f"bundle {MANIFEST_NAME} is malformed ({type(exc).__name__}: {exc})") from None


def _check_file(path: Path, expected_sha256: str, what: str) -> None:
    if not path.is_file():
        raise BundleError(f"bundle {what} {path.name} is missing")
    try:
        actual = sha256_file(path)
    except OSError as exc:
        raise BundleError(f"bundle {what} {path.name} cannot be read ({exc.strerror})") from None
    if actual != expected_sha256:
        raise BundleError(f"bundle {what} {path.name} was altered (sha256 mismatch)")


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    entropy: EntropyTables

    @classmethod
    def open(cls, path: str | Path) -> "Bundle":
        path = Path(path)
        manifest = _read_manifest(path)
        config = manifest.model.get("config", {}) if isinstance(manifest.model, dict) else {}
        try:
            m, slices, z_channels = int(config["M"]), int(config["num_slices"]), int(config["z_channels"])
        except (KeyError, TypeError, ValueError):
            raise BundleError("manifest model config lacks M, num_slices or z_channels") from None
        if slices < 1 or m < 1 or m % slices:
            raise BundleError(f"manifest model config has M={m}, num_slices={slices}: M must split into slices")

        for name in graph_order(manifest.num_slices):
            spec = manifest.graphs[name]
            wanted_in, wanted_out = graph_io_names(name)
            have_in, have_out = [t.name for t in spec.inputs], [t.name for t in spec.outputs]
            if sorted(have_in) != sorted(wanted_in) or sorted(have_out) != sorted(wanted_out):
                raise BundleError(f"manifest graph {name} has inputs {have_in} and outputs {have_out}, "
                                  f"expected {wanted_in} and {wanted_out}")
            for tensor in spec.inputs + spec.outputs:
                if tensor.dtype not in ("float32", "float16"):
                    raise BundleError(f"manifest graph {name} tensor {tensor.name} has dtype "
                                      f"{tensor.dtype!r}, expected float32 or float16")
            _check_file(_member(path, spec.file, f"graph {name}"), spec.sha256, "graph")

        entropy_path = _member(path, manifest.entropy_file, "entropy")
        _check_file(entropy_path, manifest.entropy_sha256, "entropy tables")
        return cls(path, manifest, _load_entropy(entropy_path, z_channels))

    # ---- what the codec needs to know -------------------------------------------

    def graph_path(self, name: str) -> Path:
        return self.path / self.manifest.graphs[name].file

    @property
    def config(self) -> dict:
        return self.manifest.model["config"]

    @property
    def num_slices(self) -> int:
        return int(self.config["num_slices"])

    @property
    def latent_channels(self) -> int:
        return int(self.config["M"])

    @property
    def slice_channels(self) -> int:
        return self.latent_channels // self.num_slices

    @property
    def z_channels(self) -> int:
        return int(self.config["z_channels"])


def _load_entropy(path: Path, z_channels: int) -> EntropyTables:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [name for name in ENTROPY_ARRAYS if name not in npz.files]
            if missing:
                raise BundleError(f"bundle {path.name} lacks arrays {missing}")
            arrays = {name: _typed(name, npz[name], path.name) for name in ENTROPY_ARRAYS}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BundleError(f"bundle {path.name} cannot be read as .npz ({exc})") from None
    tables = EntropyTables(**arrays)
    _check_tables(tables, z_channels, path.name)
    return tables
