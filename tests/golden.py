"""The golden vectors (tests/data/golden) and their deterministic weights
(`dcae.golden`), for the test fixtures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dcae.golden import golden_state

GOLDEN = Path(__file__).parent / "data" / "golden"


def official_state(seed: int = 0) -> dict[str, np.ndarray]:
    """The official configuration's parameters (the golden traces' weights), named
    as upstream's `dcae_params.json` lists them."""
    return golden_state(json.loads((GOLDEN / "dcae_params.json").read_text()), seed)
