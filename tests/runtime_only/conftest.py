"""Tests of the torch-free runtime alone: they import `dcae_deploy.runtime` and
nothing of torch, `dcae`, the exporter or the other test modules, so they run
where only the base dependencies are installed (NumPy 2 included).

The bundle they run is the embedded model's, exported beforehand:

    dcae-export -o BUNDLE                        # where torch is (the dev venv)
    DCAE_TEST_BUNDLE=BUNDLE python -m pytest -q -p no:cacheprovider -c /dev/null \\
        --rootdir . --confcutdir tests/runtime_only tests/runtime_only

(`.ci/wheel_check.sh` runs them so against the installed wheel.) In the dev
venv they run as part of the normal `pytest -q`; without DCAE_TEST_BUNDLE
the session exports one with `dcae-export` first (the exporter is there), and
only where neither is possible are they skipped.

The checked-in files are read from tests/data (the portable sets written by
`python -m tests.portable_files write`, the Kodak images), next to this folder.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent.parent
DATA = TESTS / "data"
BUNDLE_ENV = "DCAE_TEST_BUNDLE"


def pytest_report_header(config):
    import dcae_deploy

    return [f"runtime-only tests: dcae_deploy from {Path(dcae_deploy.__file__).parent}, numpy {np.__version__}, "
            f"bundle {os.environ.get(BUNDLE_ENV) or '(exported by the session)'}"]


def _load(path: Path, name: str):
    """A module of tests/ by its path: `tests` need not be importable (it is not
    a package, and the repository root is not on sys.path against a wheel)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def portable_files():
    """tests/portable_files.py: CROPS, SETS, crop(name), symbols_digest(symbols)
    (its top level imports numpy only)."""
    return _load(TESTS / "portable_files.py", "_runtime_only_portable_files")


def _exporter_available() -> bool:
    from dcae_deploy.runtime.default_bundle import exporter_available

    return exporter_available()


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """A bundle of the embedded model: $DCAE_TEST_BUNDLE, else one exported now
    with `dcae-export` (where the exporter is installed), else skip."""
    given = os.environ.get(BUNDLE_ENV)
    if given:
        path = Path(given)
        assert (path / "manifest.json").is_file(), f"{BUNDLE_ENV}={given} is not a bundle (no manifest.json)"
        return path
    if not _exporter_available():
        pytest.skip(f"no bundle: set {BUNDLE_ENV} to a bundle of the embedded model (dcae-export -o DIR, "
                    f"where dcae-deploy[reference] is installed)")
    path = tmp_path_factory.mktemp("runtime_only") / "bundle"
    # The user's command, in a process of its own (this one stays torch-free).
    # The margin is not measured: the files' margin is the default one anyway.
    done = subprocess.run([sys.executable, "-m", "dcae_deploy.export.cli", "-o", str(path), "--quiet",
                           "--no-margin-measure"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"dcae-export failed: {done.stderr[-2000:]}"
    return path


@pytest.fixture(scope="session")
def codec(bundle):
    from dcae_deploy.runtime import Codec

    return Codec(bundle, threads=2)


@pytest.fixture(scope="session")
def kodak():
    """kodak(name, height=None, width=None, top=0, left=0): a Kodak image (or a crop of it), uint8 RGB."""
    from dcae_deploy.runtime.imaging import load_image

    def image(name: str, height: int | None = None, width: int | None = None, top: int = 0,
              left: int = 0) -> np.ndarray:
        pixels = load_image(DATA / "kodak" / f"{name}.png")
        if height is None:
            return pixels
        return np.ascontiguousarray(pixels[top : top + height, left : left + width])

    return image
