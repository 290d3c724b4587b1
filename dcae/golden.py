"""Golden deterministic weights: the weights upstream's golden vectors were made with.

Each parameter is drawn from numpy's PCG64 generator seeded with
crc32(name) ^ seed, by a rule that depends only on the parameter's name and
shape, so the official configuration's 119 M parameters need no file. The
golden vectors (tests/data/golden) record what upstream's code computes with
these weights; the benchmarks and the tests build models from here.
"""
from __future__ import annotations

import math
import zlib

import numpy as np

# The EntropyBottleneck's filter widths and init scale (compressai's defaults).
EB_FILTERS = (1, 3, 3, 3, 3, 1)
EB_INIT_SCALE = 10.0


def _entropy_bottleneck_param(name: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    if name.endswith("quantiles"):
        return np.tile(np.array([-10.0, 0.0, 10.0], np.float32), (shape[0], shape[1], 1))
    if ".matrices." in name:
        i = int(name.rsplit(".", 1)[1])
        scale = EB_INIT_SCALE ** (1 / (len(EB_FILTERS) - 1))
        init = math.log(math.expm1(1 / scale / EB_FILTERS[i + 1]))
        return (init + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    if ".biases." in name:
        return rng.uniform(-0.5, 0.5, shape).astype(np.float32)
    return (0.05 * rng.standard_normal(shape)).astype(np.float32)  # the factors


def golden_param(name: str, shape, seed: int = 0) -> np.ndarray:
    """One parameter's golden value."""
    rng = np.random.Generator(np.random.PCG64(zlib.crc32(name.encode()) ^ seed))
    shape = tuple(shape)
    if name.startswith("entropy_bottleneck."):
        return _entropy_bottleneck_param(name, shape, rng)
    if name == "dt":
        return rng.standard_normal(shape).astype(np.float32)
    is_vector = len(shape) == 1 or (len(shape) == 3 and shape[1:] == (1, 1))
    if is_vector and name.endswith("bias"):
        if name.startswith("cc_scale_transforms.") and name.endswith(".4.bias"):
            # The scale heads' last bias spreads the predicted scales over the whole table.
            return (1.5 + 0.5 * rng.standard_normal(shape)).astype(np.float32)
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)
    if is_vector:
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if "relative_position_params" in name:
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) / math.sqrt(fan_in)).astype(np.float32)


def golden_state(shapes: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """{name: float32 array} for parameters {name: shape}."""
    return {name: golden_param(name, shape, seed) for name, shape in shapes.items()}


def parameter_shapes(config) -> dict[str, list[int]]:
    """{name: shape} of a configuration's parameters (upstream's names)."""
    import torch

    from .model import DCAE

    with torch.device("meta"):
        return {name: list(p.shape) for name, p in DCAE(config).named_parameters()}


def golden_model(config="dcae", seed: int = 0):
    """A DCAE of `config` (default: the official one) with the golden weights and
    its entropy tables built, in eval mode."""
    import torch

    from .checkpoint import model_from_state_dict
    from .config import get_config

    if isinstance(config, str):
        config = get_config(config)
    state = golden_state(parameter_shapes(config), seed)
    return model_from_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, config).eval()
