"""`dcae batch` on a local Ray (2 CPUs, started once for the module): the same
bytes as the single-process CLI, failures reported and not fatal, reruns that
redo exactly what is missing or damaged, and the message without Ray."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dcae_deploy.runtime import cli

REPO = Path(__file__).resolve().parent.parent
GOOD = ["odd", "square", "wide", "gray", "rgba"]  # the images that code


@pytest.fixture(scope="module")
def ray_local():
    """One small local Ray for the whole module, shut down at the end."""
    from dcae_deploy.runtime.batch import import_ray, start_local_ray

    ray = import_ray()
    start_local_ray(num_cpus=2, object_store_memory=200 * 2**20)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory, kodak_crop) -> Path:
    """Five small images (an odd 37x53, grayscale, RGBA) and a corrupt PNG."""
    folder = tmp_path_factory.mktemp("batch_images")
    Image.fromarray(kodak_crop("kodim01", 37, 53, 100, 200)).save(folder / "odd.png")
    Image.fromarray(kodak_crop("kodim02", 48, 48)).save(folder / "square.png")
    Image.fromarray(kodak_crop("kodim03", 24, 70, 50, 50)).save(folder / "wide.png")
    Image.fromarray(kodak_crop("kodim04", 30, 20)[:, :, 1]).save(folder / "gray.png")
    rgba = Image.fromarray(kodak_crop("kodim05", 20, 30)).convert("RGBA")
    rgba.save(folder / "rgba.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG that is not
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory, images, tiny_bundle) -> tuple[Path, Path]:
    """(.dcae dir, .png dir) written by the single-process CLI."""
    coded = tmp_path_factory.mktemp("reference_coded")
    decoded = tmp_path_factory.mktemp("reference_decoded")
    assert cli.main(["compress", str(images), "-o", str(coded), "-b", str(tiny_bundle), "--threads", "1"]) == 1
    assert sorted(p.stem for p in coded.iterdir()) == sorted(GOOD)
    assert cli.main(["decompress", str(coded), "-o", str(decoded), "-b", str(tiny_bundle), "--threads", "1"]) == 0
    return coded, decoded


@pytest.fixture(scope="module")
def batch_coded(tmp_path_factory, ray_local, images, tiny_bundle) -> tuple[Path, int, str, str]:
    """`dcae batch compress` of the folder on 2 workers: (out, exit status, stdout, stderr)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    out = tmp_path_factory.mktemp("batch_coded") / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = cli.main(["batch", "compress", str(images), "-o", str(out), "-b", str(tiny_bundle),
                         "--workers", "2"])
    return out, code, stdout.getvalue(), stderr.getvalue()


def results(path: Path) -> dict[str, dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    by_name = {Path(r["input"]).stem: r for r in lines}
    assert len(by_name) == len(lines), "one line per input"
    return by_name


def files_in(directory: Path) -> list[str]:
    """Every file below `directory`, hidden temporaries included."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


# ---- compress ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_batch_compress_writes_the_cli_bytes_and_reports_the_corrupt_input(batch_coded, reference, images):
    out, code, stdout, stderr = batch_coded
    assert code == 1  # one input failed
    assert files_in(out) == sorted([f"{n}.dcae" for n in GOOD] + ["results.jsonl"])  # no temporaries
    for name in GOOD:
        assert (out / f"{name}.dcae").read_bytes() == (reference[0] / f"{name}.dcae").read_bytes(), name

    lines = results(out / "results.jsonl")
    assert set(lines) == set(GOOD) | {"broken"}
    broken = lines.pop("broken")
    assert broken["status"] == "failed" and broken["bytes"] is None and not (out / "broken.dcae").exists()
    assert "broken.png" in broken["error"] and "Pillow" in broken["error"]
    assert broken["input"] == str(images / "broken.png")
    for name, line in lines.items():
        data = (out / f"{name}.dcae").read_bytes()
        assert line["status"] == "ok" and line["error"] is None
        assert line["output"] == str(out / f"{name}.dcae") and line["bytes"] == len(data)
        with Image.open(images / f"{name}.png") as img:
            assert line["bpp"] == pytest.approx(8 * len(data) / (img.width * img.height))
        assert line["seconds"] > 0
    assert any("alpha" in w for w in lines["rgba"]["warnings"])

    assert "dcae: error: " in stderr and "broken.png" in stderr and "Traceback" not in stderr
    assert "5 coded, 0 skipped (valid output there), 1 failed" in stdout
    assert "images/s" in stdout and str(out / "results.jsonl") in stdout


def test_rerun_redoes_exactly_the_missing_and_damaged_outputs(ray_local, tmp_path, batch_coded, reference, images,
                                                              tiny_bundle):
    from dcae_deploy.runtime.batch import run_batch

    out = tmp_path / "out"
    shutil.copytree(batch_coded[0], out)
    (out / "odd.dcae").unlink()  # deleted
    (out / "square.dcae").unlink()  # deleted
    data = (out / "wide.dcae").read_bytes()
    (out / "wide.dcae").write_bytes(data[:-7])  # truncated
    flipped = bytearray((out / "gray.dcae").read_bytes())
    flipped[-3] ^= 0x10
    (out / "gray.dcae").write_bytes(bytes(flipped))  # bad CRC
    kept = (out / "rgba.dcae").stat()

    summary = run_batch("compress", [str(images)], str(out), bundle=str(tiny_bundle), workers=2)
    assert summary.counts == {"ok": 4, "skipped": 1, "failed": 1, "not-run": 0}
    assert summary.exit_status == 1 and summary.failures[0][0] == str(images / "broken.png")
    lines = results(out / "results.jsonl")
    assert {n: r["status"] for n, r in lines.items()} == {
        "odd": "ok", "square": "ok", "wide": "ok", "gray": "ok", "rgba": "skipped", "broken": "failed"}
    assert "truncated" in lines["wide"]["warnings"][0] and "coded again" in lines["wide"]["warnings"][0]
    assert "CRC" in lines["gray"]["warnings"][0]
    assert lines["rgba"]["bytes"] == kept.st_size
    assert (out / "rgba.dcae").stat().st_mtime_ns == kept.st_mtime_ns  # not rewritten
    for name in GOOD:
        assert (out / f"{name}.dcae").read_bytes() == (reference[0] / f"{name}.dcae").read_bytes(), name
    assert files_in(out) == files_in(batch_coded[0])


def test_other_options_do_not_reuse_an_output(ray_local, tmp_path, batch_coded, images, tiny_bundle):
    """A sound file written with other options (here: portable, asked not
    portable) is not this job's output: coded again."""
    from dcae_deploy.runtime.batch import run_batch
    from dcae_deploy.runtime.container import unpack

    out = tmp_path / "out"
    shutil.copytree(batch_coded[0], out)
    summary = run_batch("compress", [str(images / "odd.png"), str(images / "gray.png")], str(out),
                        bundle=str(tiny_bundle), workers=1, margin=None)
    assert summary.counts["ok"] == 2 and summary.exit_status == 0
    assert not unpack((out / "odd.dcae").read_bytes()).header.portable
    assert "another setup or with other options" in results(out / "results.jsonl")["odd"]["warnings"][0]


# ---- decompress ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_batch_decompress_writes_the_cli_bytes_and_resumes(ray_local, tmp_path, reference, tiny_bundle):
    from dcae_deploy.runtime.batch import run_batch

    coded = tmp_path / "coded"
    shutil.copytree(reference[0], coded)
    (coded / "cut.dcae").write_bytes((coded / "odd.dcae").read_bytes()[:-10])  # a damaged input
    out = tmp_path / "decoded"
    summary = run_batch("decompress", [str(coded)], str(out), bundle=str(tiny_bundle), workers=2)
    assert summary.counts == {"ok": 5, "skipped": 0, "failed": 1, "not-run": 0}
    lines = results(out / "results.jsonl")
    assert lines["cut"]["status"] == "failed" and "truncated" in lines["cut"]["error"]
    assert not (out / "cut.png").exists()
    for name in GOOD:
        assert (out / f"{name}.png").read_bytes() == (reference[1] / f"{name}.png").read_bytes(), name
        assert lines[name]["bytes"] == (coded / f"{name}.dcae").stat().st_size

    (out / "odd.png").unlink()
    png = (out / "wide.png").read_bytes()
    (out / "wide.png").write_bytes(png[: len(png) // 2])  # truncated PNG
    bad = bytearray((out / "gray.png").read_bytes())
    bad[-20] ^= 0x01  # a flipped bit in the pixel data: its chunk CRC no longer matches
    (out / "gray.png").write_bytes(bytes(bad))
    summary = run_batch("decompress", [str(coded)], str(out), bundle=str(tiny_bundle), workers=2)
    statuses = {n: r["status"] for n, r in results(out / "results.jsonl").items()}
    assert statuses == {"odd": "ok", "wide": "ok", "gray": "ok", "square": "skipped", "rgba": "skipped",
                        "cut": "failed"}
    for name in GOOD:
        assert (out / f"{name}.png").read_bytes() == (reference[1] / f"{name}.png").read_bytes(), name


# ---- inputs, usage, errors ----------------------------------------------------------------------------

def test_files_from_a_list_with_a_missing_path(ray_local, tmp_path, images, reference, tiny_bundle, capsys):
    listing = tmp_path / "lists" / "inputs.txt"
    listing.parent.mkdir()
    shutil.copy(images / "square.png", listing.parent / "square.png")
    listing.write_text(f"# inputs\nsquare.png\n\n{images / 'odd.png'}\nmissing.png\n")
    out = tmp_path / "out"
    code = cli.main(["batch", "compress", "--files-from", str(listing), "-o", str(out), "-b", str(tiny_bundle),
                     "--workers", "1", "--results", str(tmp_path / "r.jsonl")])
    _, err = capsys.readouterr()
    assert code == 1 and "missing.png" in err and "Traceback" not in err
    lines = results(tmp_path / "r.jsonl")
    assert lines["missing"]["status"] == "failed" and "no such file" in lines["missing"]["error"]
    assert lines["square"]["input"] == str(listing.parent / "square.png")
    for name in ("square", "odd"):
        assert (out / f"{name}.dcae").read_bytes() == (reference[0] / f"{name}.dcae").read_bytes()
    assert files_in(out) == ["odd.dcae", "square.dcae"]


def test_usage_and_setup_errors_are_one_line(tmp_path, images, tiny_bundle, capsys):
    """Refused on the driver before any actor starts: nothing written."""
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(images / "odd.png", other / "odd.png")
    cases = [
        (["batch", "compress", "-o", str(tmp_path / "o"), "-b", str(tiny_bundle)], 2),  # no inputs
        (["batch", "compress", str(images), str(other), "-o", str(tmp_path / "o"), "-b", str(tiny_bundle)], 2),
        (["batch", "compress", str(images), "-o", str(tmp_path / "o"), "--workers", "0"], 2),
        (["batch", "compress", str(images), "-o", str(tmp_path / "o"), "--workers", "3:2"], 2),
        (["batch", "compress", str(images), "-o", str(tmp_path / "o"), "--address", "auto", "--cpus", "2"], 2),
        (["batch", "compress", str(tmp_path / "nothing"), "-o", str(tmp_path / "o"), "-b", str(tiny_bundle)], 1),
        (["batch", "compress", str(images), "-o", str(tmp_path / "o"), "-b", str(tmp_path)], 1),  # no bundle
        (["batch", "decompress", str(images), "-o", str(tmp_path / "o"), "-b", str(tiny_bundle)], 1),  # no .dcae
        (["batch", "compress", "--files-from", str(tmp_path / "no.txt"), "-o", str(tmp_path / "o"),
          "-b", str(tiny_bundle)], 1),
    ]
    for argv, expected in cases:
        code = cli.main(argv)
        _, err = capsys.readouterr()
        assert code == expected, (argv, err)
        assert "Traceback" not in err
        if expected == 1:
            assert err.startswith("dcae: error: ") and err.count("\n") == 1, err
        else:  # argparse's usage, then one line; or ours
            assert err.strip().splitlines()[-1].startswith(("dcae: error: ", "dcae batch compress: error: ")), err
        assert not (tmp_path / "o").exists()


def test_help_explains_the_options(capsys):
    assert cli.main(["batch", "--help"]) == 0
    out = capsys.readouterr().out
    assert "compress" in out and "decompress" in out and "docs/batch.md" in out
    assert cli.main(["batch", "compress", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--workers", "--threads", "--address", "--files-from", "--results", "--redo", "--margin",
                   "valid", "atomically"):
        assert option in out


def test_without_ray_one_line_says_how_to_install_it(tmp_path, images):
    """Ray blocked from importing: the runtime and the CLI load without it,
    and `dcae batch` says how to install it."""
    script = (
        "import sys\n"
        "sys.modules['ray'] = None  # as if not installed: import ray raises ModuleNotFoundError\n"
        "import dcae_deploy.runtime, dcae_deploy.runtime.cli, dcae_deploy.runtime.codec, dcae_deploy.runtime.batch, dcae_deploy.runtime.filejobs\n"
        "from dcae_deploy.runtime import cli\n"
        f"sys.exit(cli.main(['batch', 'compress', {str(images)!r}, '-o', {str(tmp_path / 'o')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr == ("dcae: error: dcae batch needs Ray, which is not installed: "
                           "pip install 'dcae-deploy[ray]' (in a source checkout: pip install -e '.[ray]')\n")
    assert not (tmp_path / "o").exists()


def test_the_runtime_does_not_import_ray():
    script = ("import sys, dcae_deploy.runtime.cli, dcae_deploy.runtime.codec, dcae_deploy.runtime.batch, dcae_deploy.runtime.filejobs, dcae_deploy.runtime.inputs\n"
              "from dcae_deploy.runtime import Codec\n"
              "print('ray' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
