"""python -m dcae.train: a short run, checkpoints, and resuming."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dcae.train import main, parse_args, train

TRAIN_IMAGES = Path(__file__).parent / "data" / "train"


def _args(out, steps, **extra):
    argv = ["--data", str(TRAIN_IMAGES), "--out", str(out), "--preset", "tiny", "--steps", str(steps),
            "--batch-size", "2", "--crop", "128", "--save-every", "1", "--seed", "3"]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}"] + ([str(value)] if value != "" else [])
    return parse_args(argv)


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_short_run_writes_a_loadable_checkpoint(tmp_path):
    path = train(_args(tmp_path, 2))
    state = _load(path)
    assert state["step"] == 2 and state["preset"] == "tiny"
    assert "optimizer" in state and "aux_optimizer" in state
    from dcae import load_checkpoint

    model = load_checkpoint(path)  # our own checkpoints load like official ones
    assert model.config.M == 40


def test_resume_continues_from_the_last_checkpoint(tmp_path, capsys):
    train(_args(tmp_path, 2))
    before = _load(tmp_path / "last.pth.tar")
    train(_args(tmp_path, 3))
    after = _load(tmp_path / "last.pth.tar")
    assert "resuming from" in capsys.readouterr().err
    assert after["step"] == 3
    # one more optimiser step from the saved state: Adam's step count went on
    step_counts = [s["step"] for s in after["optimizer"]["state"].values()]
    assert max(float(c) for c in step_counts) == 3
    changed = [k for k in before["state_dict"] if not torch.equal(before["state_dict"][k], after["state_dict"][k])]
    assert any(k.startswith("g_a.") for k in changed)


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(SystemExit, match="multiple of 128"):
        train(_args(tmp_path, 1, crop=100))
    with pytest.raises(SystemExit, match="no images"):
        main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--steps", "1"])


def test_a_new_run_starts_from_init_weights_and_logs(tmp_path, capsys):
    import json

    first = train(_args(tmp_path / "a", 2))
    second = train(_args(tmp_path / "b", 3, init=first, log_every=1, eval_images=TRAIN_IMAGES, eval_every=3,
                         eval_limit=1))
    assert "starting from" in capsys.readouterr().err
    # Steps count on from the initial weights: one step was trained here.
    assert _load(second)["step"] == 3
    lines = [json.loads(line) for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [3]
    # Evaluated where the initial weights stand, then every --eval-every steps.
    assert [line["step"] for line in lines if "eval" in line] == [2, 3]
    for evaluation in (line["eval"] for line in lines if "eval" in line):
        assert evaluation["images"] == 1 and 0 < evaluation["bpp"] < 24 and 5 < evaluation["psnr"] < 60
    with pytest.raises(ValueError, match="not a tiny model"):
        train(_args(tmp_path / "c", 1, init=Path(__file__).parent.parent / "dcae" / "weights" / "fixture.pth.tar"))


@pytest.mark.slow
def test_sigterm_stops_with_a_saved_checkpoint_and_one_line(tmp_path):
    """`kill` ends a run like Ctrl-C: the checkpoint of the last finished step
    is saved, the process says where on one line (no traceback), exit 130."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    log = out / "train_log.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dcae.train", "--data", str(TRAIN_IMAGES), "--out", str(out), "--preset", "tiny",
         "--steps", "100000", "--batch-size", "2", "--crop", "128", "--log-every", "1", "--save-every", "100000",
         "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + 240
    while not (log.exists() and log.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("stopped; checkpoint: ")
    assert _load(out / "last.pth.tar")["step"] >= 2


def test_gain_one_is_the_fixed_rate_model_and_the_gain_moves_the_rate(tiny_model):
    """DCAE.forward with gain a: a = 1 gives the fixed-rate pass exactly; a larger
    gain quantises finer, so the estimated rate rises and y_hat moves closer to y."""
    from dcae_deploy.runtime.imaging import pad_image

    model = tiny_model.eval()
    x = torch.from_numpy(pad_image(np.asarray(Image.open(TRAIN_IMAGES / "100075.jpg").convert("RGB"))[:256, :256])[0])
    with torch.no_grad():
        plain, one = model(x), model(x, gain=torch.tensor(1.0))
        torch.testing.assert_close(one["x_hat"], plain["x_hat"], rtol=0, atol=0)
        bits = {a: -torch.log2(model(x, gain=torch.tensor(a))["likelihoods"]["y"]).sum().item() for a in (0.5, 1.0, 2.0)}
    assert bits[0.5] < bits[1.0] < bits[2.0]


def test_variable_rate_run_learns_gains_per_level_and_resumes(tmp_path):
    """--variable-rate: the checkpoint holds the levels' lambdas and learned gains;
    a resume goes on with them; a fixed-rate run folder is not resumed as one."""
    path = train(_args(tmp_path, 2, variable_rate="", lambdas="0.004,0.016,0.064"))
    first = _load(path)
    levels = first["rate_levels"]
    assert levels["lambdas"] == [0.004, 0.016, 0.064]
    start = [0.5 * np.log(v / 0.0185) for v in levels["lambdas"]]
    assert not np.allclose(np.log(levels["gains"]), start, rtol=0, atol=1e-7)  # the gains were trained
    train(_args(tmp_path, 3, variable_rate="", lambdas="0.004,0.016,0.064"))
    assert _load(path)["step"] == 3
    with pytest.raises(ValueError, match="trained with --variable-rate"):
        train(_args(tmp_path, 4))
