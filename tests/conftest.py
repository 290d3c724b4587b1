"""Shared fixtures: models built from the golden deterministic weights, small
random-init models, and the test images shipped in tests/data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests import golden

DATA = Path(__file__).parent / "data"
GOLDEN = golden.GOLDEN
GOLDEN_CASES = ["seed0_256x256", "seed0_384x256"]


@pytest.fixture(scope="session")
def golden_state():
    """{name: torch tensor} of the official configuration, seed 0 (parameters only)."""
    import torch

    state = golden.official_state(seed=0)
    return {k: torch.from_numpy(v) for k, v in state.items()}


@pytest.fixture(scope="session")
def golden_model(golden_state):
    from dcae.checkpoint import model_from_state_dict
    from dcae.config import get_config

    return model_from_state_dict(golden_state, get_config("dcae"))


@pytest.fixture(scope="session")
def golden_bundle(golden_model, tmp_path_factory):
    """(path, manifest, graph reports) of the official configuration exported
    fp32 from the golden weights (about 45 s, once per session; its portable
    margin is not measured, which would take as long again)."""
    from dcae_deploy.export.export import export_bundle

    path = tmp_path_factory.mktemp("golden_bundle") / "official"
    manifest, reports = export_bundle(golden_model, path, preset="dcae", progress=lambda *a: None,
                                      measure_margin=False)
    return path, manifest, reports


def golden_input(case: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(GOLDEN / f"{case}_input.png").convert("RGB"))


def golden_meta(case: str) -> dict:
    return json.loads((GOLDEN / f"{case}.json").read_text())


@pytest.fixture(scope="session")
def small_random_model():
    """The small preset at a fixed random init, entropy tables built."""
    import torch

    from dcae.model import DCAE

    torch.manual_seed(1)
    return _ready(DCAE("small"))


def _ready(model):
    model.eval()
    model.update(force=True)
    return model


@pytest.fixture(scope="session")
def kodak_image() -> np.ndarray:
    """kodim23 (768x512), a real photo for round trips."""
    from PIL import Image

    return np.asarray(Image.open(DATA / "kodak" / "kodim23.png").convert("RGB"))


# ---- the runtime: one tiny bundle per session, exported with the real exporter ----

@pytest.fixture(scope="session")
def tiny_model():
    """The tiny preset with the golden deterministic weights (seed 0), tables built.

    Not torch's default init: with that, every scale index is 0 and every z
    symbol 0, so nothing about the entropy path would be tested. The golden
    weights spread the scales over the whole table, as a trained model does.
    """
    from dcae.golden import golden_model

    return golden_model("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory):
    """`tiny_model` saved as a checkpoint file (for commands that take one)."""
    import dcae

    path = tmp_path_factory.mktemp("tiny_ckpt") / "tiny.pth.tar"
    dcae.save_checkpoint(path, tiny_model, preset="tiny")
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model, tmp_path_factory):
    """A fp32 bundle of `tiny_model` (exported once; about 10 s)."""
    from dcae_deploy.export.export import export_bundle

    path = tmp_path_factory.mktemp("tiny_bundle") / "bundle"
    export_bundle(tiny_model, path, progress=lambda *a, **k: None, preset="tiny", threads=1)
    return path


@pytest.fixture(scope="session")
def kodak_crop():
    """kodak_crop(name, height, width, top=0, left=0): a small uint8 crop of a Kodak image."""
    from PIL import Image

    def crop(name: str, height: int, width: int, top: int = 0, left: int = 0) -> np.ndarray:
        pixels = np.asarray(Image.open(DATA / "kodak" / f"{name}.png").convert("RGB"))
        return np.ascontiguousarray(pixels[top : top + height, left : left + width])

    return crop
