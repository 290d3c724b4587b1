"""The bundle of the package's default model, exported once on first use.

`dcae compress` without `-b` uses the default checkpoint shipped in `dcae/`.
Its bundle is cached under `$DCAE_CACHE` (or `~/.cache/dcae-deploy`) in
`bundles/default-fp32-<tag>`, where the tag changes whenever the checkpoint
file does (its size and mtime) or, without a checkpoint file, the package
version, and whenever the source of the code that writes the graphs does
(the `dcae_deploy.export` and `dcae` packages): a bundle cached by an older exporter
would otherwise be used forever, in its older (slower) graph form. A missing
bundle is exported by running `dcae-export` in a
subprocess: the exporter needs torch, and the runtime must never import it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from dcae_deploy import IMPORT_ROOT
from .errors import BundleError
from .manifest import MANIFEST_NAME

DEFAULT_CHECKPOINT_RELATIVE = Path("weights") / "fixture.pth.tar"  # inside the dcae package
_INSTALL_HINT = "pass -b BUNDLE, or install dcae-deploy[reference] so it can be exported"


def cache_dir() -> Path:
    return Path(os.environ.get("DCAE_CACHE") or Path.home() / ".cache" / "dcae-deploy")


def _package_dir(name: str) -> Path | None:
    # find_spec locates a top-level package without running its __init__
    # (importing dcae would import torch).
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def default_checkpoint_file() -> Path | None:
    package = _package_dir("dcae")
    if package is None:
        return None
    path = package / DEFAULT_CHECKPOINT_RELATIVE
    return path if path.is_file() else None


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("dcae-deploy")
    except Exception:  # not installed (a source checkout): any fixed string will do
        return "source"


# the packages whose code decides what an exported bundle's graphs are
GRAPH_SOURCE_PACKAGES = ("dcae_deploy.export", "dcae")
# what `dcae-export` needs beyond this package's own dependencies: the
# [reference] extra (dcae_deploy.export itself is always installed with the runtime)
EXPORTER_NEEDS = ("torch", "compressai", "onnx")


def _graph_source_digest(digest) -> None:
    for name in GRAPH_SOURCE_PACKAGES:
        package = _package_dir(name)
        for source in sorted(package.glob("*.py")) if package is not None else ():
            digest.update(f"{name}/{source.name}:".encode())
            digest.update(source.read_bytes())


def _model_tag() -> str:
    checkpoint = default_checkpoint_file()
    if checkpoint is not None:
        stat = checkpoint.stat()
        key = f"checkpoint:{stat.st_size}:{stat.st_mtime_ns}"
    else:
        key = f"version:{_package_version()}"
    digest = hashlib.sha256(key.encode())
    _graph_source_digest(digest)
    return digest.hexdigest()[:12]


def default_bundle_path() -> Path:
    return cache_dir() / "bundles" / f"default-fp32-{_model_tag()}"


def _findable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # e.g. a module blocked with sys.modules[name] = None
        return False


def exporter_available() -> bool:
    return all(_findable(name) for name in EXPORTER_NEEDS) and _findable("dcae_deploy.export")


def ensure_default_bundle(announce=None) -> Path:
    """The default bundle's path, exporting it first if it is not cached.

    `announce(message)` is told before a (slow) export starts.
    """
    path = default_bundle_path()
    if (path / MANIFEST_NAME).is_file():
        return path
    if not exporter_available():
        raise BundleError(f"no bundle given and the default model's bundle is not built; {_INSTALL_HINT}")
    if announce is not None:
        announce(f"exporting the default model's bundle to {path} (first use only)")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Export next to the final place, then rename: a crash or a concurrent
    # first use never leaves a half-written bundle under the final name.
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        out = staging / "bundle"
        _run_exporter(out)
        if not (out / MANIFEST_NAME).is_file():
            raise BundleError(f"exporting the default bundle wrote no {MANIFEST_NAME}; {_INSTALL_HINT}")
        try:
            os.rename(out, path)
        except OSError:
            if not (path / MANIFEST_NAME).is_file():  # not just another process winning the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _run_exporter(out: Path) -> None:
    # The exporter sits next to this package in a source checkout; make sure
    # the child can import it whatever the current directory is.
    root = str(IMPORT_ROOT)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "dcae_deploy.export.cli", "-o", str(out), "--quiet"]
    try:
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        raise BundleError(f"cannot run the exporter ({exc.strerror}); {_INSTALL_HINT}") from None
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        reason = reason.removeprefix("dcae-export: error: ")
        raise BundleError(f"exporting the default bundle failed ({reason}); pass -b BUNDLE")
