"""Checkpoint loading: official layouts, preset inference, readable refusals."""
from __future__ import annotations

import pytest
import torch

import dcae
from dcae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dcae.model import DCAE


def _tiny_state():
    torch.manual_seed(3)
    model = DCAE("tiny")
    return model, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("prefix", ["", "module."])
def test_official_layout_with_and_without_module_prefix(tmp_path, prefix):
    model, state = _tiny_state()
    model.update(force=True)
    state = {prefix + k: v for k, v in model.state_dict().items()}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 3, "state_dict": state, "optimizer": {"lr": 1e-4}, "loss": 0.5}, path)
    loaded = load_checkpoint(path)
    assert loaded.config == dcae.get_config("tiny")
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_bare_state_dict_without_tables_gets_update(tmp_path):
    model, state = _tiny_state()
    params = {k: v for k, v in state.items() if not k.endswith(("_quantized_cdf", "_offset", "_cdf_length"))}
    path = tmp_path / "bare.pth"
    torch.save(params, path)
    loaded = load_checkpoint(path)
    assert loaded.gaussian_conditional.quantized_cdf.shape == (64, 3133)
    assert loaded.entropy_bottleneck._quantized_cdf.numel() > 0


def test_official_configuration_loads_from_golden_weights(tmp_path, golden_state):
    path = tmp_path / "official.pth.tar"
    torch.save({"state_dict": {"module." + k: v for k, v in golden_state.items()}}, path)
    loaded = load_checkpoint(path)
    assert loaded.config == dcae.get_config("dcae")
    assert torch.equal(loaded.dt, golden_state["dt"])
    assert loaded.gaussian_conditional.quantized_cdf.shape == (64, 3133)


def test_wrong_shape_is_refused_naming_the_keys(tmp_path):
    _, state = _tiny_state()
    state["g_a.0.conv.weight"] = torch.zeros(5, 3, 5, 5)
    path = tmp_path / "bad.pth.tar"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"g_a\.0\.conv\.weight \(5, 3, 5, 5\)") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    _, state = _tiny_state()
    del state["h_a.2.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth.tar"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="missing h_a.2.bias"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_non_checkpoint_files_are_refused(tmp_path, content):
    path = tmp_path / "junk.pth.tar"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth.tar")


def test_own_checkpoints_round_trip_with_their_config(tmp_path):
    model, _ = _tiny_state()
    model.update(force=True)
    save_checkpoint(tmp_path / "c.pth.tar", model, preset="tiny", step=7)
    loaded = load_checkpoint(tmp_path / "c.pth.tar")
    assert loaded.preset == "tiny" and loaded.config == model.config
