"""The golden deterministic weights (tests/data/golden): upstream's generator,
shared by the test fixtures and benchmarks.entropy_agreement."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).parent / "data" / "golden"


def make_state(shapes: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """{name: array} for parameters of the given shapes, from upstream's generator."""
    spec = importlib.util.spec_from_file_location("golden_weights", GOLDEN / "weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_state(shapes, seed=seed)


def official_state(seed: int = 0) -> dict[str, np.ndarray]:
    """The official configuration's parameters (the golden traces' weights)."""
    return make_state(json.loads((GOLDEN / "dcae_params.json").read_text()), seed)
