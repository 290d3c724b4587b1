"""dcae-bench --sizes: the Scaling section (dcae_deploy/bench/scaling.py).

Tiny bundle and checkpoint, mosaics of two small crops at sizes of a few
hundredths of a megapixel, one thread: the times are process starts, not
coding, and only their presence and the report's shape are asserted. Which
failures count as out of memory is checked on plain processes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from dcae_deploy.bench import big_images, cli, scaling

SIZES = "0.02,0.04"


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def images(tmp_path_factory, kodak_crop) -> Path:
    folder = tmp_path_factory.mktemp("sizes_images")
    Image.fromarray(kodak_crop("kodim05", 120, 180)).save(folder / "kodim05.png")
    Image.fromarray(kodak_crop("kodim20", 180, 120)).save(folder / "kodim20.png")  # portrait: turned
    return folder


def bench(tiny_bundle, checkpoint, images, out, *extra) -> int:
    return cli.main(["--bundle", str(tiny_bundle), "--images", str(images), "--out", str(out), "--checkpoint",
                     str(checkpoint), "--threads", "1", "--quiet", "--sizes-only", *extra])


def entry(report: dict, setup: str) -> dict:
    return next(e for e in report["scaling"]["setups"] if e["setup"] == setup)


@pytest.mark.slow
def test_sizes_give_a_table_per_setup_with_times_and_peak_memory(tiny_bundle, checkpoint, images, tmp_path):
    code = bench(tiny_bundle, checkpoint, images, tmp_path, "--backends", "torch,onnxruntime", "--sizes", SIZES)
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    section = report["scaling"]
    # megapixels at the cells' 3:2 aspect, even dimensions
    assert [(s["width"], s["height"]) for s in section["sizes"]] == [(174, 116), (244, 162)]
    assert [e["setup"] for e in section["setups"]] == ["torch", "onnxruntime:bundle"]
    for e in section["setups"]:
        assert len(e["rows"]) == 2
        for row in e["rows"]:
            assert row["outcome"] == "ok", row
            assert row["encode_s"] > 0 and row["decode_s"] > 0
            # a fresh process's own peak: more than an interpreter, far less than this test's process
            assert 20 * 2**20 < row["encode_peak"] < 4 * 2**30 and 20 * 2**20 < row["decode_peak"] < 4 * 2**30
            assert row["bpp"] > 0
    assert entry(report, "torch")["compress"].startswith("python -m dcae_deploy.bench.scaling compress IN.png")
    assert entry(report, "onnxruntime:bundle")["compress"].startswith("dcae compress IN.png -o OUT.dcae -b ")
    # the reference and the runtime write the same kind of file from the same mosaic
    assert [r["width"] for r in entry(report, "torch")["rows"]] == [174, 244]
    md = (tmp_path / "report.md").read_text()
    assert "## Scaling" in md and "### torch" in md and "### onnxruntime:bundle" in md
    assert "| 0.0202 MP (174x116) |" in md and "1.00x / 1.00x" in md
    # --sizes-only: nothing else measured
    assert "## Headline" not in md and "## Decodability matrix" not in md
    assert all(s["speed"] is None and s["rd"] is None for s in report["setups"]) and report["matrix"] is None


def test_a_setup_over_its_memory_cap_is_out_of_memory_and_the_run_goes_on(tiny_bundle, checkpoint, images,
                                                                          tmp_path):
    # 600M of address space: torch cannot even map its libraries; the runtime has the default cap
    code = bench(tiny_bundle, checkpoint, images, tmp_path, "--backends", "torch,onnxruntime", "--sizes", SIZES,
                 "--size-memory-cap", "torch=600M")
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    torch_rows = entry(report, "torch")["rows"]
    assert entry(report, "torch")["cap"] == 600 * 2**20
    assert torch_rows[0]["outcome"] == "out of memory" and torch_rows[0]["stage"] == "encode"
    assert torch_rows[1]["outcome"] == "not tried" and torch_rows[1]["reason"] == "out of memory at 0.0202 MP"
    runtime_rows = entry(report, "onnxruntime:bundle")["rows"]
    assert [r["outcome"] for r in runtime_rows] == ["ok", "ok"]
    assert all(r["encode_s"] > 0 and r["decode_peak"] > 0 for r in runtime_rows)
    md = (tmp_path / "report.md").read_text()
    assert "**out of memory at 0.0202 MP** (encode: " in md and "FAILURE" not in md


def test_a_failure_other_than_memory_is_reported_and_fails_the_run(tiny_bundle, checkpoint, images, tmp_path,
                                                                  monkeypatch, capsys):
    fail = [sys.executable, "-c", "import sys; sys.exit('dcae: error: the bundle is broken')"]
    monkeypatch.setattr(scaling, "runtime_commands", lambda *a, **k: scaling.Commands(fail, fail))
    code = bench(tiny_bundle, checkpoint, images, tmp_path, "--backends", "onnxruntime", "--sizes", SIZES)
    assert code == cli.EXIT_MEASUREMENT_FAILED
    assert "scaling: onnxruntime:bundle: failed at 0.0202 MP (encode): dcae: error: the bundle is broken" in \
        capsys.readouterr().err
    rows = entry(json.loads((tmp_path / "report.json").read_text()), "onnxruntime:bundle")["rows"]
    assert [r["outcome"] for r in rows] == ["failed", "not tried"]
    assert "FAILURE: 1 Scaling run(s) failed" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--sizes", "0"], "--sizes: a size must be a number of megapixels over 0, got '0'"),
    (["--sizes", "0.1,-1"], "--sizes: a size must be a number of megapixels over 0, got '-1'"),
    (["--sizes", "abc"], "--sizes: expected megapixels such as 0.4,3,12, got 'abc'"),
    (["--sizes", "nan"], "--sizes: a size must be a number of megapixels over 0"),
    (["--sizes", "68"], "--sizes: 68 MP is over the format's limit of 67.1089 MP"),
    (["--sizes", "0.5"], "--sizes: 0.5 MP (866x578) is more than the 2 images of 180x120 cover"),
    (["--sizes", "0.00000001"], "--sizes: 1e-08 MP is too small for an image"),
    (["--sizes-only"], "--sizes-only needs --sizes"),
    (["--sizes", "0.02", "--size-memory-cap", "2X"], "--size-memory-cap: expected a size such as 2G"),
    (["--sizes", "0.02", "--size-memory-cap", "tensorrt=2G"], "--size-memory-cap: no setup tensorrt in this run"),
    (["--sizes", "0.02", "--memory-limit", "lots"], "--memory-limit: expected a size such as 2G"),
])
def test_bad_sizes_are_one_line_usage_errors(tiny_bundle, images, tmp_path, capsys, args, message):
    code = cli.main(["--bundle", str(tiny_bundle), "--images", str(images), "--out", str(tmp_path),
                     "--backends", "onnxruntime", *args])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert len(err.strip().splitlines()) == 1 and err.startswith("dcae-bench: error: ") and message in err, err
    assert not (tmp_path / "report.json").exists()


def test_megapixels_keep_the_aspect_ratio_with_even_dimensions():
    assert scaling.dimensions(0.4, 512, 768) == (774, 516)
    assert scaling.dimensions(24, 512, 768) == (6000, 4000)
    width, height = scaling.dimensions(3, 170, 200)
    assert width % 2 == 0 and height % 2 == 0 and abs(width * height - 3e6) < 0.01 * 3e6
    assert scaling.parse_sizes("12,0.4,3,3") == [0.4, 3.0, 12.0]


def test_processes_report_their_peak_and_what_killed_them():
    python = [sys.executable, "-c"]
    ok = scaling.run_process(python + ["import numpy; a = numpy.ones(200 * 2**20 // 8)"])
    assert ok.returncode == 0 and ok.seconds > 0 and 200 * 2**20 < ok.peak_bytes < 400 * 2**20
    capped = scaling.run_process(python + ["import numpy; a = numpy.ones(2**31 // 8)"], cap=2**30)
    assert capped.out_of_memory and "Unable to allocate" in capped.message
    killed = scaling.run_process(python + ["import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert killed.out_of_memory and killed.message == "killed by SIGKILL"  # the OOM killer's signal
    failed = scaling.run_process(python + ["import sys; sys.exit('dcae: error: no such file: x.png')"])
    assert not failed.out_of_memory and failed.message == "dcae: error: no such file: x.png"
    missing = scaling.run_process(["/nonexistent/dcae"])
    assert not missing.out_of_memory and "could not start /nonexistent/dcae" in missing.message


def test_big_images_measures_with_the_same_processes(tiny_bundle, images):
    paths = sorted(images.iterdir())
    result = big_images.measure(str(tiny_bundle), paths, [(180, 120)], "1G", 1, say=lambda *a: None)
    (row,) = result["rows"]
    assert (row["width"], row["height"]) == (180, 120) and row["encode_s"] > 0 and row["decode_peak"] > 20 * 2**20
    assert row["bpp"] > 0 and row["psnr"] > 0
    # its --memory-limit reaches dcae, whose refusal ends the measurement with the command and the reason
    with pytest.raises(SystemExit, match=r"big_images: dcae compress IN.png .*--memory-limit 1M failed on "
                                         r"180x120: dcae: error: .*memory limit 1.0M is too small"):
        big_images.measure(str(tiny_bundle), paths, [(180, 120)], "1M", 1, say=lambda *a: None)
