"""dcae_deploy.bench.training_log: the checked-in record of where training stands."""
import json
from pathlib import Path

import numpy as np
import pytest

from dcae_deploy.bench import training_log

DATA = Path(__file__).parent / "data"


def write_log(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def step(n: int, loss: float = 1.0) -> dict:
    return {"step": n, "lr": 1e-4, "lmbda": 0.032, "crop": 128, "bf16": True,
            "loss": loss, "bpp": 0.5, "psnr": 28.0, "s_per_step": 2.0}


def test_jpeg_curve_rises_with_quality_and_interpolates(tmp_path):
    kodak = sorted((DATA / "kodak").glob("*.png"))[:2]
    assert kodak, "tests/data/kodak has the test crops"
    for p in kodak:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    curve = training_log.jpeg_curve(tmp_path)
    rates, psnrs = np.array(curve).T
    assert np.all(np.diff(rates) > 0) and np.all(np.diff(psnrs) > 0)
    middle = (rates[3] + rates[4]) / 2
    assert psnrs[3] < training_log.jpeg_psnr_at(curve, middle) < psnrs[4]
    assert training_log.jpeg_psnr_at(curve, rates[-1] * 2) is None


def test_report_merges_runs_and_compares_with_jpeg(tmp_path):
    out = tmp_path / "results"
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_log(first, [step(25, 2.0), {"step": 500, "eval": {"bpp": 0.5, "psnr": 28.0, "images": 24}}])
    write_log(second, [step(25, 3.0), step(525), {"step": 1000, "eval": {"bpp": 0.6, "psnr": 29.0, "images": 24}}])
    assert training_log.main([str(first), "--out", str(out)]) == 0
    assert training_log.main([str(second), "--out", str(out)]) == 0
    kept = training_log.read_log(out / "training_log.jsonl")
    assert [r["step"] for r in kept] == [25, 500, 525, 1000]
    assert kept[0]["loss"] == 3.0  # the newer run's line wins
    curve = [(0.4, 27.0), (0.8, 31.0)]
    text = training_log.to_markdown(kept, "some CPU", curve)
    assert "| 500 | 24 | 0.5000 | 28.00 | 28.00 | +0.00 |" in text
    assert "| 1000 | 24 | 0.6000 | 29.00 | 29.00 | +0.00 |" in text


def test_bad_input_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    assert training_log.main([str(bad), "--out", str(tmp_path)]) == 2
    assert training_log.main([str(tmp_path / "missing.jsonl")]) == 2
    write_log(bad, [step(25)])
    assert training_log.main([str(bad), "--out", str(tmp_path), "--jpeg-images", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error:") for line in err)
