"""dcae-bench end to end on two small images with tiny bundles, and its parts.

One run (module fixture) of `dcae_deploy.bench.cli.main` with the PyTorch reference,
onnxruntime on an fp32 bundle and on an fp16 bundle whose entropy graphs are
fp16 too (so its files carry another fingerprint: the matrix has refusals and
forced decodes to show), and TensorRT, which is not installed here. Speed
values are not asserted; their presence and the report's invariants are.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dcae
from dcae_deploy.bench import cli
from dcae_deploy.bench.codecs import CODECS
from dcae_deploy.bench.matrix import Outcomes, _attempt, silent_wrong_totals
from dcae_deploy.bench.report import stage_order
from dcae_deploy.bench.setups import Decoded, Encoded, RuntimeCoder, Setup
from dcae_deploy.bench.torch_reference import TorchReference
from dcae_deploy.runtime.errors import DesyncError
from dcae_deploy.runtime.metrics import psnr

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGES = {"kodim05": (170, 200, 37, 53), "kodim20": (200, 170, 0, 0)}  # MS-SSIM needs >= 161 px a side


@pytest.fixture(scope="module")
def fp16_bundle(tiny_model, tiny_checkpoint, tmp_path_factory) -> Path:
    from dcae_deploy.export.export import export_bundle

    path = tmp_path_factory.mktemp("bench_fp16") / "fp16"
    export_bundle(tiny_model, path, precision="fp16", entropy_precision="same", preset="tiny", threads=1,
                  source_checkpoint=tiny_checkpoint, progress=lambda *a, **k: None)
    return path


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory, kodak_crop) -> Path:
    folder = tmp_path_factory.mktemp("bench_images")
    for name, (h, w, top, left) in IMAGES.items():
        Image.fromarray(kodak_crop(name, h, w, top, left)).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def bench(tiny_bundle, fp16_bundle, tiny_checkpoint, images_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_out")
    code = cli.main(["--bundle", str(tiny_bundle), "--bundle", str(fp16_bundle), "--images", str(images_dir),
                     "--backends", "torch,torch-cuda,onnxruntime,tensorrt", "--checkpoint", str(tiny_checkpoint),
                     "--repeats", "1", "--threads", "1", "--out", str(out), "--quiet"])
    report = json.loads((out / "report.json").read_text())
    return code, out, report


def setup_named(report: dict, name: str) -> dict:
    return next(s for s in report["setups"] if s["name"] == name)


# ---- the report -----------------------------------------------------------------------

@pytest.mark.slow
def test_report_lists_every_setup_and_says_why_tensorrt_is_missing(bench):
    code, out, report = bench
    assert code == 0
    assert report["format"] == "dcae-bench-report"
    assert {"machine", "options", "bundles", "setups", "matrix", "symbol_differences", "plots"} <= set(report)
    assert report["machine"]["cpu"] and report["machine"]["gpu"].startswith(("none", "NVIDIA"))
    assert "onnxruntime" in report["machine"]["versions"]
    names = [s["name"] for s in report["setups"]]
    assert names == ["torch", "torch-cuda", "onnxruntime:bundle", "onnxruntime:fp16", "tensorrt:bundle",
                     "tensorrt:fp16"]
    assert setup_named(report, "onnxruntime:fp16")["precision"] == "fp16 (entropy fp16)"
    import torch

    cuda = setup_named(report, "torch-cuda")
    if torch.cuda.is_available():  # the reference on the GPU: timed, with its own numeric class
        assert cuda["available"] and cuda["numeric_class"] == "torch-cuda" and cuda["speed"]
    else:
        assert not cuda["available"] and "no CUDA GPU" in cuda["reason"] and cuda["speed"] is None
    for name in ("tensorrt:bundle", "tensorrt:fp16"):
        s = setup_named(report, name)
        assert not s["available"] and "TensorRT" in s["reason"] and s["speed"] is None
        assert f"{name}: not available: {s['reason']}" in (out / "report.md").read_text()
    # The fp32 tiny bundle records no source checkpoint: the torch setup says so.
    assert any("records no source checkpoint" in note for note in setup_named(report, "torch")["notes"])


def test_speed_has_stages_spread_and_memory_of_each_available_setup(bench):
    _, _, report = bench
    for s in report["setups"]:
        if not s["available"]:
            continue
        speed = s["speed"]
        for direction in ("encode", "decode"):
            assert {"median", "p25", "p75", "min", "max"} <= set(speed[f"{direction}_ms"])
            assert speed[f"{direction}_images_per_second"] > 0
        assert {"g_a", "h_a", "z_coding", "h_s", "y_coding"} <= set(speed["stages_ms"]["encode"])
        assert {f"slice_{k}_{i}" for k in ("params", "coding", "lrp") for i in range(5)} <= \
            set(speed["stages_ms"]["decode"])
        assert "g_s" in speed["stages_ms"]["decode"]
        assert speed["memory"]["peak_rss_mb"] > 0 and speed["load_seconds"] > 0
        # a process that only loads and decodes: its own peak, with the model loaded
        decode_memory = speed["decode_memory"]
        assert decode_memory["files"] == len(IMAGES)
        assert sorted(decode_memory["decoded_shapes"]) == sorted([h, w, 3] for h, w, _, _ in IMAGES.values())
        assert 0 < decode_memory["peak_delta_mb"] and decode_memory["peak_rss_mb"] > decode_memory["peak_delta_mb"]
        # a runtime setup is measured in a process without torch
        assert speed["torch_imported"] == (s["kind"] == "torch")
        assert s["speedup_vs_torch"] is not None
    assert setup_named(report, "torch")["speedup_vs_torch"] == {"encode": 1.0, "decode": 1.0}


def test_rate_distortion_is_recomputable_from_the_files(bench, images_dir):
    _, _, report = bench
    for s in report["setups"]:
        if not s["available"]:
            assert s["rd"] is None
            continue
        rows = s["rd"]["images"]
        assert [r["image"] for r in rows] == sorted(f"{n}.png" for n in IMAGES)
        for row in rows:
            file = Path(row["file"])
            assert file.suffix == ".dcae"  # every setup on the CPU writes portable files
            assert row["bytes"] == file.stat().st_size
            assert row["bpp"] == pytest.approx(8 * file.stat().st_size / (row["height"] * row["width"]))
            original = np.asarray(Image.open(images_dir / row["image"]).convert("RGB"))
            decoded = np.asarray(Image.open(row["decoded"]).convert("RGB"))
            assert row["psnr-rgb"] == pytest.approx(psnr(original, decoded))
            assert 0 < row["ms-ssim-rgb"] <= 1
            assert row["encoding_time"] > 0 and row["decoding_time"] > 0
            assert {"quality", "bpp", "psnr-rgb"} <= set(row["jpeg"])
        assert s["rd"]["mean"]["bpp"] == pytest.approx(np.mean([r["bpp"] for r in rows]))


def test_decodability_matrix_has_no_silent_wrong_decode_in_the_runtime(bench):
    _, out, report = bench
    matrix = report["matrix"]
    names = matrix["setups"]
    assert names == ["torch", "onnxruntime:bundle", "onnxruntime:fp16"]
    cells = {(c["encoder"], c["decoder"]): c for c in matrix["cells"]}
    assert set(cells) == {(e, d) for e in names for d in names}
    for (e, d), c in cells.items():
        counted = c["identical"] + c["decoded"] + c["refused_total"] + c["wrong_silent"]
        assert c["images"] == counted == len(IMAGES)
        if e == d:
            assert c["identical"] == len(IMAGES)  # each setup reads back exactly what it wrote
        assert c["decoder_detects_desync"] and c["wrong_silent"] == 0, c
        assert c["forced"] is None or c["forced"]["wrong_silent"] == 0, c
    # The reference (on the CPU) and the fp32 bundle write portable files: each
    # decodes the other's to the encoder's symbols, none refused.
    for e, d in (("torch", "onnxruntime:bundle"), ("onnxruntime:bundle", "torch")):
        assert cells[(e, d)]["identical"] + cells[(e, d)]["decoded"] == len(IMAGES), cells[(e, d)]
    # fp16 entropy graphs make the fp16 bundle's files for its own setup only, and it
    # reads no portable file: refused both ways, also when forced.
    for e, d in (("onnxruntime:bundle", "onnxruntime:fp16"), ("onnxruntime:fp16", "onnxruntime:bundle"),
                 ("torch", "onnxruntime:fp16"), ("onnxruntime:fp16", "torch")):
        assert cells[(e, d)]["refused"] == {"FingerprintMismatchError": len(IMAGES)}, cells[(e, d)]
    assert report["silent_wrong"] == {"checked": 0, "unchecked": 0, "unchecked_forced": 0}
    text = (out / "report.md").read_text()
    assert "No setup decoded any file wrongly without an error" in text and "no end-of-stream check" not in text


def test_symbol_differences_per_slice(bench):
    _, _, report = bench
    pairs = {(d["a"], d["b"]): d for d in report["symbol_differences"]}
    assert set(pairs) == {("torch", "onnxruntime:bundle"), ("torch", "onnxruntime:fp16"),
                          ("onnxruntime:bundle", "onnxruntime:fp16")}
    for d in pairs.values():
        assert d["images"] == len(IMAGES) and len(d["per_slice"]) == 5
        for p in d["per_slice"]:
            assert 0 <= p["index_fraction"] <= 1 and 0 <= p["symbol_fraction"] <= 1
    # fp16 g_a moves the latent itself
    assert pairs[("onnxruntime:bundle", "onnxruntime:fp16")]["symbol_fraction"] > 0


def test_plots_are_valid_pngs(bench):
    _, out, report = bench
    assert report["plots"] == {"latency": "latency_by_stage.png", "rate_distortion": "rate_distortion.png"}
    for name in report["plots"].values():
        path = out / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as img:
            img.verify()
        assert f"]({name})" in (out / "report.md").read_text()


# ---- at several qualities ----------------------------------------------------------------

QUALITIES = (20, 50, 80)


@pytest.fixture(scope="module")
def bench_qualities(tiny_bundle, tiny_checkpoint, images_dir, tmp_path_factory):
    """--qualities on the reference and the runtime, no timing, JPEG's curve only."""
    out = tmp_path_factory.mktemp("bench_qualities")
    code = cli.main(["--bundle", str(tiny_bundle), "--images", str(images_dir), "--backends", "torch,onnxruntime",
                     "--checkpoint", str(tiny_checkpoint), "--qualities", "80,20,50", "--codecs", "jpeg",
                     "--no-speed", "--threads", "1", "--out", str(out), "--quiet"])
    return code, out, json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_every_qualitys_files_decode_on_every_setup_to_the_encoders_symbols(bench_qualities, tiny_bundle,
                                                                           tiny_model, images_dir):
    from dcae_deploy.runtime import Codec
    from dcae_deploy.runtime.container import unpack

    code, out, report = bench_qualities
    assert code == 0
    assert report["options"]["qualities"] == list(QUALITIES) and report["options"]["headline_quality"] == 50
    matrix = report["matrix"]
    names = matrix["setups"]
    assert names == ["torch", "onnxruntime:bundle"] and matrix["qualities"] == list(QUALITIES)
    cells = {(c["quality"], c["encoder"], c["decoder"]): c for c in matrix["cells"]}
    assert set(cells) == {(q, e, d) for q in QUALITIES for e in names for d in names}
    for c in cells.values():
        assert c["images"] == c["identical"] + c["decoded"] == len(IMAGES), c
        assert c["wrong_silent"] == 0 and c["refused_total"] == 0, c
    assert report["silent_wrong"]["checked"] == 0
    codec = Codec(tiny_bundle, threads=1)
    for s in report["setups"]:
        by_quality = s["rd_by_quality"]
        assert [e["quality"] for e in by_quality] == list(QUALITIES)
        for entry in by_quality:
            for row in entry["images"]:
                data = Path(row["file"]).read_bytes()
                assert row["quality"] == entry["quality"]
                assert unpack(data).header.gain_code == row["gain_code"] == codec.rate_levels.gain_code(row["quality"])
                if row["quality"] == 50:  # quality 50: the bytes the bench writes without --qualities
                    pixels = np.asarray(Image.open(images_dir / row["image"]).convert("RGB"))
                    default = (codec.compress(pixels) if s["kind"] == "runtime" else
                               dcae.compress_image(tiny_model, pixels, format="dcae"))
                    assert data == default
        rates = [entry["mean"]["bpp"] for entry in by_quality]
        assert rates[0] < rates[1] < rates[2], rates
        assert s["rd"]["images"] == by_quality[1]["images"]  # the headline and the per-image table: quality 50
    text = (out / "report.md").read_text()
    assert all(f"### Quality {q}\n" in text for q in QUALITIES) and "qualities coded: 20, 50, 80" in text


@pytest.mark.slow
def test_qualities_give_curves_against_the_codecs_with_bd_rates(bench_qualities):
    code, out, report = bench_qualities
    curves = report["rd_curves"]
    assert set(curves["setups"]) == {"torch", "onnxruntime:bundle"}
    for curve in curves["setups"].values():
        assert [p["quality"] for p in curve["points"]] == list(QUALITIES)
        assert [p["images"] for p in curve["points"]] == [len(IMAGES)] * len(QUALITIES)
        rates = [p["bpp"] for p in curve["points"]]
        assert rates == sorted(rates)
    assert list(curves["codecs"]) == ["JPEG"] and "libjpeg" in curves["codecs"]["JPEG"]["library"]
    assert [p["setting"] for p in curves["codec_curves"]["jpeg"]["points"]] == list(CODECS["jpeg"].qualities)
    assert {name: set(table) for name, table in curves["bd_rate"].items()} == {
        "torch": {"JPEG"}, "onnxruntime:bundle": {"JPEG"}}
    assert set(curves["bd_rate"]["torch"]["JPEG"]) == {"psnr", "ms_ssim"}
    assert report["plots"]["rd_curves"] == "rd_curves.png"
    assert (out / "rd_curves.png").read_bytes()[:8] == PNG_SIGNATURE
    text = (out / "report.md").read_text()
    assert "### Curves over the qualities" in text and "](rd_curves.png)" in text
    assert "BD-rate against each codec, on PSNR" in text and "BD-rate against each codec, on MS-SSIM in dB" in text


def test_a_setup_that_writes_the_reference_rate_only_decodes_every_quality(tiny_bundle, kodak_crop, tmp_path):
    """The C++ host (its C interface takes no quality) and the reference on a
    GPU code quality 50 alone: no row at the other qualities, a column at all."""
    from dcae_deploy.bench.matrix import coding_pass

    class ReferenceRateOnly(RuntimeCoder):
        codes_qualities = False

        def encode(self, pixels, quality=None):
            assert quality in (None, 50)
            return super().encode(pixels)

    Image.fromarray(kodak_crop("kodim05", 64, 96)).save(tmp_path / "a.png")
    a = Setup("onnxruntime:a", "runtime", "onnxruntime", "fp32", bundle_path=str(tiny_bundle))
    b = Setup("only50:b", "runtime", "onnxruntime", "fp32", bundle_path=str(tiny_bundle))
    coders = {a.name: RuntimeCoder(a, threads=1), b.name: ReferenceRateOnly(b, threads=1)}
    passed = coding_pass([a, b], coders, [tmp_path / "a.png"], tmp_path / "files", with_jpeg=False,
                         progress=lambda *args: None, qualities=[30, 50])
    cells = {(c["quality"], c["encoder"], c["decoder"]): c for c in passed["cells"]}
    assert set(cells) == {(30, a.name, a.name), (30, a.name, b.name)} | {
        (50, e, d) for e in (a.name, b.name) for d in (a.name, b.name)}
    assert all(c["images"] == c["identical"] == 1 for c in cells.values())
    assert [e["quality"] for e in passed["rd_by_quality"][b.name]] == [50]
    assert [e["quality"] for e in passed["rd_by_quality"][a.name]] == [30, 50]


# ---- refusals of the command line ----------------------------------------------------

def test_checkpoint_of_another_configuration_is_refused(tiny_bundle, images_dir, tmp_path, capsys):
    # the embedded default is the small preset; the bundle is tiny
    code = cli.main(["--bundle", str(tiny_bundle), "--images", str(images_dir), "--backends", "torch,onnxruntime",
                     "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert "dcae-bench: error:" in err and "another configuration" in err and "Traceback" not in err


def test_rounds_pool_every_run_and_keep_the_highest_memory_peak():
    from dcae_deploy.bench.measure import merge_rounds, summarise

    def raw(encode, decode, g_a, peak, load):
        return {"setup": "s", "numeric_class": "c", "threads": 2, "load_seconds": load, "torch_imported": False,
                "images": [{"image": "a.png", "encode_s": encode, "decode_s": decode,
                            "encode_stages_ms": {"g_a": g_a}, "decode_stages_ms": {"g_s": 2 * g_a}}],
                "memory": {"peak_rss_mb": peak, "rss_before_load_mb": 10.0, "peak_delta_mb": peak - 10.0,
                           "method": "m"},
                "decode_memory": {"peak_rss_mb": peak / 2, "peak_delta_mb": peak / 2 - 10.0}}

    merged = merge_rounds([raw([1.0, 1.2], [2.0], 100.0, 50.0, 0.5), raw([1.4], [2.2, 2.6], 300.0, 80.0, 0.9),
                           raw([3.0], [2.4], 200.0, 60.0, 0.7)])
    image = merged["images"][0]
    assert image["encode_s"] == [1.0, 1.2, 1.4, 3.0] and image["decode_s"] == [2.0, 2.2, 2.6, 2.4]
    assert image["encode_stages_ms"] == {"g_a": 200.0} and image["decode_stages_ms"] == {"g_s": 400.0}
    assert merged["memory"]["peak_rss_mb"] == 80.0 and merged["load_seconds"] == 0.7 and merged["rounds"] == 3
    assert merged["decode_memory"]["peak_rss_mb"] == 40.0
    speed = summarise(merged)
    assert speed["encode_ms"]["median"] == pytest.approx(1300.0) and speed["encode_ms"]["runs"] == 4


def test_rounds_measure_each_setup_in_turn(tmp_path, monkeypatch):
    """--rounds 2: the setups alternate (a, b, a, b), and each setup's runs are pooled."""
    import dcae_deploy.bench.measure as measure

    order = []

    def fake(setup, images, repeats, threads, work, timeout=None):
        order.append(setup.name)
        return {"setup": setup.name, "numeric_class": "c", "threads": threads, "load_seconds": 0.1,
                "torch_imported": False, "memory": {"peak_rss_mb": 1.0, "method": "m"},
                "images": [{"image": "a.png", "encode_s": [0.1 * len(order)] * repeats, "decode_s": [0.2] * repeats,
                            "encode_stages_ms": {}, "decode_stages_ms": {}}]}

    monkeypatch.setattr(measure, "measure_in_subprocess", fake)
    setups = [type("S", (), {"name": n, "available": True})() for n in ("a", "b")]
    speeds, errors = cli.measure_speed(setups, [], 2, 1, tmp_path, lambda *a: None, rounds=2)
    assert order == ["a", "b", "a", "b"] and not errors
    assert speeds["a"]["encode_ms"]["runs"] == 4 and speeds["a"]["encode_ms"]["max"] == pytest.approx(300.0)


@pytest.mark.parametrize("args, message", [
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--matrix-images", "0"], "--matrix-images must be at least 1"),
    (["--backends", "onnxruntime,nope"], "unknown backend"),
    (["--limit", "0"], "no images"),
    (["--backends", "torch", "--checkpoint", "missing.pth.tar"], "checkpoint not found"),
    (["--qualities", "20,120"], "--qualities: quality must be from 0 to 100"),
    (["--qualities", "50", "--codecs", "jpeg,bpg"], "--codecs: unknown codec(s) bpg"),
])
def test_usage_errors(tiny_bundle, images_dir, tmp_path, capsys, args, message):
    code = cli.main(["--bundle", str(tiny_bundle), "--images", str(images_dir), "--out", str(tmp_path), *args])
    assert code == cli.EXIT_USAGE and message in capsys.readouterr().err


@pytest.mark.slow
def test_matrix_images_bounds_the_cross_decodes_but_not_the_rate_distortion(tiny_bundle, fp16_bundle, images_dir,
                                                                          tmp_path):
    out = tmp_path / "out"
    code = cli.main(["--bundle", str(tiny_bundle), "--bundle", str(fp16_bundle), "--images", str(images_dir),
                     "--backends", "onnxruntime", "--matrix-images", "1", "--repeats", "1", "--threads", "1",
                     "--no-jpeg", "--out", str(out), "--quiet"])
    report = json.loads((out / "report.json").read_text())
    assert code == 0
    cells = report["matrix"]["cells"]
    assert len(cells) == 4 and report["matrix"]["images"] == 1 and report["matrix"]["of_images"] == len(IMAGES)
    for cell in cells:
        assert cell["images"] == (len(IMAGES) if cell["encoder"] == cell["decoder"] else 1), cell
    for setup in report["setups"]:
        assert len(setup["rd"]["images"]) == len(IMAGES)
    assert f"the first 1 of the {len(IMAGES)} images (--matrix-images)" in (out / "report.md").read_text()


def test_matrix_pixels_reads_later_files_symbols_only_and_identical_files_are_decoded_once(
        tiny_bundle, images_dir, tmp_path):
    """--no-speed: no timing. --matrix-pixels 1: the second image's files
    are read to their symbols only. Three setups on one bundle write the same
    bytes, so each decoder decodes an image's two foreign files once."""
    out = tmp_path / "out"
    code = cli.main(["--bundle", str(tiny_bundle), "--bundle", str(tiny_bundle), "--bundle", str(tiny_bundle),
                     "--images", str(images_dir), "--backends", "onnxruntime", "--no-speed", "--matrix-pixels", "1",
                     "--threads", "1", "--no-jpeg", "--out", str(out), "--quiet"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert all(s["speed"] is None for s in report["setups"]) and report["options"]["no_speed"]
    matrix = report["matrix"]
    assert matrix["pixel_images"] == 1 and matrix["images"] == len(IMAGES)
    for cell in matrix["cells"]:
        if cell["encoder"] == cell["decoder"]:
            assert cell["identical"] == len(IMAGES), cell  # the diagonal always decodes pixels
        else:
            assert (cell["images"], cell["identical"], cell["symbols_exact"]) == (len(IMAGES), 1, 1), cell
    assert matrix["decodes_counted"] == 6 * len(IMAGES) and matrix["decodes_run"] == 3 * len(IMAGES)
    text = (out / "report.md").read_text()
    assert "1 symbols exact" in text and "those of the other 1 read the symbols" in text
    assert "12 cross-decodes counted, 6 run" in text
    assert "Not measured (--no-speed)." in text and "### Roofline" not in text
    for setup in report["setups"]:
        assert len(setup["rd"]["images"]) == len(IMAGES)


@pytest.mark.slow
def test_a_silent_wrong_runtime_decode_fails_the_run_loudly(tiny_bundle, images_dir, tmp_path, capsys,
                                                           monkeypatch):
    import dcae_deploy.bench.matrix as matrix

    real = matrix.coding_pass

    def with_a_wrong_decode(*args, **kwargs):
        result = real(*args, **kwargs)
        result["cells"][0]["wrong_silent"] += 1  # as if the runtime had returned a wrong image
        return result

    monkeypatch.setattr(matrix, "coding_pass", with_a_wrong_decode)
    out = tmp_path / "out"
    code = cli.main(["--bundle", str(tiny_bundle), "--images", str(images_dir), "--backends", "onnxruntime",
                     "--limit", "1", "--repeats", "1", "--threads", "1", "--no-jpeg", "--out", str(out), "--quiet"])
    assert code == cli.EXIT_SILENT_WRONG
    assert "FAILURE" in capsys.readouterr().err
    assert "**FAILURE: setups decoded 1 file(s) WRONGLY WITHOUT AN ERROR.**" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["silent_wrong"]["checked"] == 1


@pytest.mark.slow
def test_a_refused_portable_file_fails_the_run(tiny_bundle, images_dir, tmp_path, capsys, monkeypatch):
    """Two setups that write portable files must decode each other's: a
    refusal between them is exit 5 and a line at the top of the report."""
    import dcae_deploy.bench.matrix as matrix

    real = matrix.coding_pass

    def with_a_refusal(*args, **kwargs):
        result = real(*args, **kwargs)
        cell = next(c for c in result["cells"] if c["encoder"] != c["decoder"])
        cell[cell["identical"] and "identical" or "decoded"] -= 1
        cell["refused"], cell["refused_total"] = {"MarginError": 1}, 1
        return result

    monkeypatch.setattr(matrix, "coding_pass", with_a_refusal)
    out = tmp_path / "out"
    code = cli.main(["--bundle", str(tiny_bundle), "--bundle", str(tiny_bundle), "--images", str(images_dir),
                     "--backends", "onnxruntime", "--limit", "1", "--repeats", "1", "--threads", "1", "--no-jpeg",
                     "--out", str(out), "--quiet"])
    assert code == cli.EXIT_PORTABLE_FAILED
    assert "portable files failed to decode in 1 of 2 decodes" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["matrix"]["portable"] == ["onnxruntime:bundle", "onnxruntime:bundle-2"]
    text = (out / "report.md").read_text()
    assert "**Portable files failed to decode in 1 of 2 decodes between the 2 setups that write them**" in text
    assert text.index("Portable files failed") < text.index("## Machine")


def headline_speeds(report_md: str, setup: str) -> tuple[str, str]:
    """The encode and decode ms cells of `setup`'s row in report.md's headline table."""
    row = next(line for line in report_md.splitlines() if line.startswith(f"| {setup} |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    return cells[2], cells[3]


@pytest.mark.slow
def test_relative_paths_from_another_directory(tiny_bundle, tiny_checkpoint, images_dir, tmp_path, monkeypatch):
    """Relative --bundle, --images, --checkpoint, --out and --files, from a
    directory that is not the repository: the measuring processes run in the
    repository, so a path left relative would point elsewhere there."""
    caller = tmp_path / "caller"
    caller.mkdir()
    monkeypatch.chdir(caller)
    code = cli.main(["--bundle", os.path.relpath(tiny_bundle), "--images", os.path.relpath(images_dir),
                     "--checkpoint", os.path.relpath(tiny_checkpoint), "--backends", "torch,onnxruntime",
                     "--limit", "1", "--repeats", "1", "--threads", "1", "--speed-only", "--out", "benchout",
                     "--files", "coded", "--quiet"])
    report = json.loads((caller / "benchout" / "report.json").read_text())
    text = (caller / "benchout" / "report.md").read_text()
    assert code == 0 and report["measurement_failed"] == []
    assert [s["name"] for s in report["setups"]] == ["torch", "onnxruntime:bundle"]
    for s in report["setups"]:
        assert s["speed"] is not None and s["speed_error"] is None, s["speed_error"]
        encode, decode = headline_speeds(text, s["name"])
        assert float(encode) == pytest.approx(s["speed"]["encode_ms"]["median"], abs=0.05)
        assert float(decode) == pytest.approx(s["speed"]["decode_ms"]["median"], abs=0.05)
    # --files relative to the caller's directory too; the report names paths relative to
    # where the command ran (no folder of the machine that wrote it)
    assert (caller / "coded" / "measure").is_dir() and report["options"]["files"] == "coded"
    assert report["options"]["images_dir"] == os.path.relpath(images_dir, caller)
    assert "FAILURE" not in text


def test_a_failed_measurement_fails_the_run_and_heads_the_report(tiny_bundle, images_dir, tmp_path, capsys,
                                                                monkeypatch):
    """A setup that runs here but whose measuring process fails: exit 4 and one
    line per failure at the top of the report, not a traceback."""
    import dataclasses

    import dcae_deploy.bench.measure as measure

    real = measure.measure_in_subprocess
    gone = tmp_path / "gone"

    def with_the_bundle_gone(setup, *args, **kwargs):
        # the child is real: it fails as it would if the bundle vanished mid-run
        return real(dataclasses.replace(setup, bundle_path=str(gone)), *args, **kwargs)

    monkeypatch.setattr(measure, "measure_in_subprocess", with_the_bundle_gone)
    out = tmp_path / "out"
    code = cli.main(["--bundle", str(tiny_bundle), "--images", str(images_dir), "--backends", "onnxruntime,tensorrt",
                     "--limit", "1", "--repeats", "1", "--threads", "1", "--speed-only", "--out", str(out),
                     "--quiet"])
    assert code == cli.EXIT_MEASUREMENT_FAILED
    err = capsys.readouterr().err
    assert "dcae-bench: FAILURE: could not measure the speed of onnxruntime:bundle" in err
    report = json.loads((out / "report.json").read_text())
    [failure] = report["measurement_failed"]
    assert failure["setup"] == "onnxruntime:bundle" and str(gone) in failure["reason"]
    assert "\n" not in failure["reason"] and "Traceback" not in failure["reason"]
    lines = (out / "report.md").read_text().splitlines()
    heading = lines.index("> **FAILURE: the speed of 1 setup(s) could not be measured.**")
    assert heading < lines.index("## Machine")
    assert f"> - onnxruntime:bundle: {failure['reason']}" in lines[heading:lines.index("## Machine")]
    assert headline_speeds("\n".join(lines), "onnxruntime:bundle") == ("failed", "failed")
    # TensorRT is merely not available here: listed with its reason, not a failure
    assert [s["setup"] for s in report["not_available"]] == ["tensorrt:bundle"]
    assert not any("tensorrt" in line for line in lines[heading:lines.index("## Machine")])


def test_versions_are_read_from_the_installed_packages():
    from importlib import metadata

    from dcae_deploy.bench.machine import library_versions

    versions = library_versions()
    assert "?" not in versions.values()
    # pytorch_msssim has no __version__: its distribution says which it is
    assert versions["pytorch_msssim"] == metadata.version("pytorch-msssim")


# ---- the parts -------------------------------------------------------------------------

def test_torch_reference_writes_and_reads_what_the_model_does(tiny_model, tiny_checkpoint, kodak_crop):
    pixels = kodak_crop("kodim13", 100, 140, 10, 20)
    reference = TorchReference(tiny_checkpoint, threads=1)
    encoded = reference.encode(pixels)
    assert encoded.data == dcae.compress_image(tiny_model, pixels, format="dcae")
    encode_stages = set(reference.last_timings)
    # Raw streams (an upstream .bin's: y coded without threshold shifts) as DCAE.decompress reads them.
    from dcae_deploy.runtime.container import unpack_bin

    upstream = dcae.compress_image(tiny_model, pixels, format="bin")
    streams = unpack_bin(upstream)
    decoded = reference.decode_streams(streams.y, streams.z, encoded.height, encoded.width)
    assert np.array_equal(decoded.x, dcae.decompress_image(tiny_model, upstream))
    assert np.array_equal(decoded.x, dcae.decompress_image(tiny_model, encoded.data))
    assert np.array_equal(decoded.symbols, encoded.symbols)
    assert np.array_equal(decoded.y_hat, encoded.y_hat)
    expected = {"load", "g_a", "h_a", "z_coding", "h_s", "y_coding", "side_stream", "total"} | {
        f"slice_{k}_{i}" for k in ("params", "coding", "lrp") for i in range(5)}
    assert encode_stages == expected
    pixels_read, symbols = reference.decode_portable(encoded.data)
    assert np.array_equal(pixels_read, decoded.x) and np.array_equal(symbols, encoded.symbols.reshape(-1))
    assert {"z_coding", "h_s", "y_coding", "g_s", "crop", "total"} | {
        f"slice_{k}_{i}" for k in ("params", "coding", "lrp") for i in range(5)} == set(reference.last_timings)


def test_torch_reference_codes_at_a_quality_as_the_model_does(tiny_model, tiny_checkpoint, kodak_crop):
    from dcae.coding import rate_levels
    from dcae_deploy.runtime.container import unpack

    pixels = kodak_crop("kodim13", 100, 140, 10, 20)
    reference = TorchReference(tiny_checkpoint, threads=1)
    low, high = reference.encode(pixels, quality=10), reference.encode(pixels, quality=90)
    for quality, encoded in ((10, low), (90, high)):
        assert encoded.data == dcae.compress_image(tiny_model, pixels, format="dcae", quality=quality)
        assert unpack(encoded.data).header.gain_code == encoded.gain_code == rate_levels(tiny_model).gain_code(quality)
        pixels_read, symbols = reference.decode_portable(encoded.data)  # the gain comes from the header
        assert np.array_equal(symbols, encoded.symbols.reshape(-1))
        assert np.array_equal(pixels_read, dcae.decompress_image(tiny_model, encoded.data))
    assert len(low.data) < len(high.data)


def test_runtime_coder_returns_the_symbols_its_decoder_read(tiny_bundle, kodak_crop):
    coder = RuntimeCoder(Setup("onnxruntime:t", "runtime", "onnxruntime", "fp32", bundle_path=str(tiny_bundle)),
                         threads=1)
    encoded = coder.encode(kodak_crop("kodim08", 60, 90))
    decoded = coder.decode(encoded.data)
    assert np.array_equal(decoded.symbols, encoded.symbols) and decoded.symbols.any()


def _decoding_to(result):
    """A decode call that returns `result`, or raises it."""
    def decode():
        if isinstance(result, Exception):
            raise result
        return result
    return decode


def test_outcomes_are_classified_by_the_symbols_read():
    symbols = np.arange(12, dtype=np.int32).reshape(1, 3, 2, 2)
    encoded = Encoded(b"", ".dcae", 4, 4, symbols, symbols)
    right = np.zeros((4, 4, 3), np.uint8)
    off_by_one = right + 1
    wrong = symbols.copy()
    wrong[0, 2, 1, 1] += 1
    outcomes = Outcomes()
    _attempt(_decoding_to(Decoded(right, symbols.copy())), encoded, right, outcomes, "a")
    _attempt(_decoding_to(Decoded(off_by_one, symbols.copy())), encoded, right, outcomes, "b")
    _attempt(_decoding_to(DesyncError("out of sync")), encoded, right, outcomes, "c")
    # right pixels but one wrong symbol is still a wrong decode
    _attempt(_decoding_to(Decoded(right, wrong)), encoded, right, outcomes, "d")
    # decodes without pixels: judged by the symbols alone
    _attempt(_decoding_to(Decoded(None, symbols.copy())), encoded, right, outcomes, "e")
    _attempt(_decoding_to(Decoded(None, wrong)), encoded, right, outcomes, "f")
    assert (outcomes.images, outcomes.identical, outcomes.decoded, outcomes.symbols_exact,
            outcomes.wrong_silent) == (6, 1, 1, 1, 2)
    assert outcomes.refused == {"DesyncError": 1} and outcomes.max_pixel_diff == 1
    assert outcomes.wrong == [{"image": "d", "symbols_wrong": 1, "symbols": 12, "psnr_vs_right_decode": None},
                              {"image": "f", "symbols_wrong": 1, "symbols": 12, "psnr_vs_right_decode": None}]
    cells = [{"decoder_detects_desync": True, "wrong_silent": 1, "forced": {"wrong_silent": 2}},
             {"decoder_detects_desync": False, "wrong_silent": 3, "forced": None},
             {"decoder_detects_desync": False, "wrong_silent": 0, "forced": {"wrong_silent": 4}}]
    assert silent_wrong_totals(cells) == {"checked": 3, "unchecked": 3, "unchecked_forced": 4}


def test_stage_order_follows_the_pipeline():
    names = ["g_s", "slice_lrp_1", "y_coding", "slice_params_1", "g_a", "slice_coding_0", "crop", "h_s",
             "slice_params_0", "slice_params_10", "load"]
    assert stage_order(names) == ["load", "g_a", "h_s", "slice_params_0", "slice_coding_0", "slice_params_1",
                                  "slice_lrp_1", "slice_params_10", "y_coding", "g_s", "crop"]


def test_attention_chunking_compares_equal_results_and_refuses_bad_sizes(capsys):
    """The chunking benchmark checks that the chunked and row-by-row attention
    equal the whole before it times anything, and prints each form's time and
    its ratio to the whole."""
    import importlib.util

    from dcae_deploy.export.rewrites import ATTENTION_CHUNKS

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "experiments" / "attention_chunking.py"
    spec = importlib.util.spec_from_file_location("attention_chunking", script)
    attention_chunking = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(attention_chunking)

    assert attention_chunking.main(["--size", "256x384", "--repeats", "1", "--heads", "2"]) == 0
    out = capsys.readouterr().out
    assert "16x24 windows" in out and "ratios" in out
    for form in ("all windows at once", f"{ATTENTION_CHUNKS} chunks in one graph", "one row of windows per call"):
        assert re.search(rf"{form} +[0-9.]+ ms +[0-9.]+x", out), form
    with pytest.raises(SystemExit) as exit_info:
        attention_chunking.main(["--size", "100x7"])
    assert exit_info.value.code == 2


def test_entropy_agreement_counts_what_moved_against_the_reference(tiny_model, tiny_bundle, kodak_crop):
    """dcae_deploy.bench.entropy_agreement feeds the reference's own slice inputs to the
    bundle's slice_params graphs: on a real crop mu and sigma agree to ~1e-5
    and few indexes move; a reference whose indexes all differ is counted so."""
    from dcae_deploy.bench.entropy_agreement import compare_bundle, reference_slice_inputs
    from dcae_deploy.runtime import Codec

    slices = reference_slice_inputs(tiny_model, kodak_crop("kodim23", 256, 256))
    codec = Codec(tiny_bundle, threads=1)
    row = compare_bundle(codec, slices)
    assert row["symbols"] == sum(s["indexes"].size for s in slices) == 40 * 16 * 16
    assert len(row["moved_indexes"]) == len(row["moved_roundings"]) == 5
    assert row["max_mu_diff"] < 1e-4 and row["max_scale_diff"] < 1e-4
    assert sum(row["moved_indexes"]) <= 1e-3 * row["symbols"]
    slices[2]["indexes"] = slices[2]["indexes"] + 1
    assert compare_bundle(codec, slices)["moved_indexes"][2] == slices[2]["indexes"].size


# ---- torch-avx2: the reference with another CPU family's kernels ---------------------

def _has_avx512() -> bool:
    from dcae_deploy.runtime.cpu import cpu_flags

    return "avx512f" in cpu_flags()


@pytest.mark.slow
def test_torch_on_other_kernels_is_a_setup_of_the_matrix_and_of_the_timing(tiny_bundle, tiny_checkpoint,
                                                                           images_dir, tmp_path):
    """torch-avx2 and torch-sse41 encode and decode in worker processes (the
    coding pass) and are timed in processes of their own, each started with
    its kernels' environment; their files and the others' decode every way to
    the encoder's symbols."""
    out = tmp_path / "out"
    code = cli.main(["--bundle", str(tiny_bundle), "--images", str(images_dir), "--backends",
                     "torch,torch-avx2,torch-sse41,onnxruntime", "--checkpoint", str(tiny_checkpoint), "--limit", "1",
                     "--repeats", "1", "--threads", "1", "--no-jpeg", "--out", str(out), "--quiet"])
    report = json.loads((out / "report.json").read_text())
    assert code == 0 and report["measurement_failed"] == []
    for name, kernels in (("torch-avx2", "avx2"), ("torch-sse41", "sse41")):
        setup = setup_named(report, name)
        assert setup["available"] and setup["kind"] == "torch" and setup["numeric_class"] == f"torch-cpu-{kernels}"
        assert setup["speed"]["numeric_class"] == f"torch-cpu-{kernels}" and setup["speed"]["encode_ms"]["median"] > 0
        assert setup["rd"]["images"][0]["file"].endswith(".dcae")
    names = report["matrix"]["setups"]
    assert names == ["torch", "torch-avx2", "torch-sse41", "onnxruntime:bundle"]
    for c in report["matrix"]["cells"]:
        assert c["images"] == 1 and c["identical"] + c["decoded"] == 1 and c["refused_total"] == 0, c
        assert c["decoder_detects_desync"] and c["wrong_silent"] == 0
    assert report["silent_wrong"] == {"checked": 0, "unchecked": 0, "unchecked_forced": 0}
    assert report["matrix"]["portable"] == names
    assert "4 setups here) decode on every such setup: 12 of 12 cross-setup decodes" in \
        " ".join((out / "report.md").read_text().split())


@pytest.mark.slow
def test_torch_avx2_worker_codes_like_the_reference_and_raises_its_errors(tiny_checkpoint, tiny_bundle,
                                                                         kodak_crop):
    from dcae_deploy.bench.setups import TorchCoder, open_setup
    from dcae_deploy.bench.torch_subprocess import RemoteTorchCoder
    from dcae_deploy.runtime.errors import CorruptStreamError
    from dcae_deploy.runtime.manifest import Manifest

    setup = Setup("torch-avx2", "torch", "torch-avx2", "fp32", checkpoint=str(tiny_checkpoint))
    remote = open_setup(setup, threads=1)
    assert isinstance(remote, RemoteTorchCoder) and remote.numeric_class == "torch-cpu-avx2"
    assert remote.num_slices == 5 and remote.reference.checkpoint == tiny_checkpoint
    assert "records no source checkpoint" in remote.reference.check_matches(Manifest.read(tiny_bundle))
    local = TorchCoder(Setup("torch", "torch", "torch", "fp32", checkpoint=str(tiny_checkpoint)), threads=1)
    pixels = kodak_crop("kodim07", 90, 120, 30, 40)
    theirs, ours = remote.encode(pixels), local.encode(pixels)
    assert {"g_a", "y_coding", "side_stream"} <= set(remote.timings)
    assert np.array_equal(local.decode(theirs.data).symbols, theirs.symbols)
    assert np.array_equal(remote.decode(ours.data).symbols, ours.symbols)
    # An error in the worker is raised here with its class: what the matrix counts.
    with pytest.raises(CorruptStreamError):
        remote.decode(theirs.data[:40])
    process = remote._proc
    remote.close()
    assert process.returncode == 0


@pytest.mark.skipif(not _has_avx512(), reason="this CPU has no AVX-512: its default kernels are the AVX2 ones")
def test_torch_avx2_refuses_a_process_whose_torch_runs_other_kernels(tiny_checkpoint, monkeypatch):
    """The environment set after torch chose its kernels changes nothing: the
    setup says so instead of computing with AVX-512 under the AVX2 name."""
    from dcae_deploy.bench.setups import open_setup
    from dcae_deploy.runtime.cpu import AVX2_KERNELS_ENV
    from dcae_deploy.runtime.errors import BackendUnavailableError

    for key, value in AVX2_KERNELS_ENV.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(BackendUnavailableError, match="AVX512 kernels"):
        open_setup(Setup("torch-avx2", "torch", "torch-avx2", "fp32", checkpoint=str(tiny_checkpoint)), threads=1)


def test_sigma_agreement_reports_the_error_by_scale():
    """An error constant in sigma is largest in ln at the smallest scales: the
    report shows it per band of the float64 scale (what sizes a margin)."""
    from dcae_deploy.bench.sigma_agreement import _by_scale, to_markdown

    anchor = np.array([0.15, 0.3, 3.0, 40.0])
    bands = _by_scale(anchor + 1e-5, anchor, np.ones(4, bool))
    assert [b["elements"] for b in bands] == [1, 1, 0, 0, 1, 1]
    assert bands[0]["max_ln"] == pytest.approx(np.log1p(1e-5 / 0.15))
    assert all(b["max_abs"] == pytest.approx(1e-5) for b in bands if b["elements"])
    stats = {"max": 1e-5, "p99.99": 1e-5, "elements": 4}
    result = {"command": "python -m dcae_deploy.bench.sigma_agreement --limit 1", "model": "m", "images": ["a.png"],
              "cpu": "c", "threads": 1, "vs_float64": {"torch": stats}, "by_scale": {"torch": bands},
              "pairs": {}, "y_elements": 1000,
              "margins": {"4.1e-05": {"marked": 2, "marked_fraction": 2e-3, "side_bytes": 80, "y_bytes_change": -3,
                                      "share": 0.0027, "marked_unshifted": 150, "side_bytes_unshifted": 250,
                                      "share_unshifted": 0.0086, "indexes_shifted": 14,
                                      "shift_choices": {"K=16, block 1536": 1}}}}
    text = to_markdown(result)
    assert "Command: `python -m dcae_deploy.bench.sigma_agreement --limit 1`" in text
    assert "| 4.1e-05 (default) | 2 | 2.00e-03 | 80 | -3 | **0.270 %** | 150 | 250 | 0.860 % |" in text
    assert "| 4.1e-05 | K=16, block 1536: 1 | 14 (1.40e-02) |" in text
    assert "| elements | 1 | 1 | 0 | 0 | 1 | 1 |" in text and "| torch | 6.7e-05 (1.0e-05) |" in text
