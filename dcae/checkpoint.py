"""Loading and saving DCAE checkpoints.

Reads the official `.pth.tar` files (`{"state_dict": ...}` with or without the
`module.` prefix of DataParallel, extra entries such as `optimizer` ignored),
bare state dicts, and this project's own checkpoints (which also record the
configuration). The preset is inferred from tensor shapes when the file does
not say; a file that matches no preset is refused with the keys that differ.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .config import PRESETS, DCAEConfig
from .model import DCAE

# Shipped inside the package: the small model (its training: docs/embedded-model.md).
DEFAULT_CHECKPOINT = Path(__file__).with_name("weights") / "fixture.pth.tar"
# Buffers that `update()` can rebuild when a checkpoint does not carry them.
ENTROPY_BUFFER_SUFFIXES = ("._offset", "._quantized_cdf", "._cdf_length", ".scale_table", ".scale_bound",
                           ".target", ".bound")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as a DCAE model; the message says why."""


def _read(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for non-checkpoint files
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _state_dict_of(obj: dict) -> dict[str, torch.Tensor]:
    state = obj.get("state_dict", obj)
    if not isinstance(state, dict) or not state:
        raise CheckpointError("checkpoint has no state_dict")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _expected_shapes(config: DCAEConfig) -> dict[str, tuple]:
    with torch.device("meta"):
        model = DCAE(config)
    return {k: tuple(v.shape) for k, v in model.named_parameters()}


def _mismatches(state: dict, expected: dict) -> list[str]:
    problems = []
    for key, shape in expected.items():
        if key not in state:
            problems.append(f"missing {key}")
        elif tuple(state[key].shape) != shape:
            problems.append(f"{key} {tuple(state[key].shape)} != {shape}")
    params_or_buffers = set(expected)
    for key in state:
        if key not in params_or_buffers and not key.endswith(ENTROPY_BUFFER_SUFFIXES):
            problems.append(f"unexpected {key}")
    return problems


def infer_config(state: dict, hint: dict | None = None) -> tuple[str, DCAEConfig]:
    """The preset (or recorded configuration) whose parameter shapes match `state`."""
    candidates = [("recorded", DCAEConfig.from_dict(hint))] if hint else list(PRESETS.items())
    best = None
    for name, config in candidates:
        problems = _mismatches(state, _expected_shapes(config))
        if not problems:
            return name, config
        if best is None or len(problems) < len(best[1]):
            best = (name, problems)
    name, problems = best
    shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
    raise CheckpointError(f"checkpoint matches no DCAE configuration (closest: {name}, {len(problems)} "
                          f"mismatched keys: {shown})")


def model_from_state_dict(state: dict, config: DCAEConfig) -> DCAE:
    """A model in eval mode with `state` loaded and its entropy tables ready."""
    model = DCAE(config)
    has_tables = state.get("gaussian_conditional._quantized_cdf", torch.empty(0)).numel() > 0 and \
        state.get("entropy_bottleneck._quantized_cdf", torch.empty(0)).numel() > 0
    if has_tables:
        model.load_state_dict(state, strict=True)  # compressai resizes the table buffers first
    else:
        params = {k: v for k, v in state.items() if not k.endswith(ENTROPY_BUFFER_SUFFIXES)}
        result = torch.nn.Module.load_state_dict(model, params, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith(ENTROPY_BUFFER_SUFFIXES)]
        if missing or result.unexpected_keys:
            raise CheckpointError(f"state dict does not fit: missing {missing[:4]}, unexpected "
                                  f"{result.unexpected_keys[:4]}")
        model.update(force=True)
    return model.eval()


def load_checkpoint(path: str | Path | None = None) -> DCAE:
    """Load a DCAE checkpoint; with no path, the embedded default (fixture) model."""
    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    obj = _read(path)
    state = _state_dict_of(obj)
    hint = obj.get("config") if isinstance(obj.get("config"), dict) else None
    preset, config = infer_config(state, hint)
    model = model_from_state_dict(state, config)
    model.preset = obj.get("preset", preset)
    # A variable-rate checkpoint's levels (`dcae.train.RateLevels.summary`),
    # which the quality knob maps qualities onto; None: one rate.
    model.rate_levels = obj.get("rate_levels")
    return model


def save_checkpoint(path: str | Path, model: DCAE, preset: str | None = None, step: int | None = None,
                    extra: dict | None = None) -> None:
    """Write `{"state_dict", "config", "preset", "step", ...extra}` atomically."""
    path = Path(path)
    payload = {"state_dict": model.state_dict(), "config": model.config.to_dict(), "preset": preset,
               "step": step}
    payload.update(extra or {})
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
