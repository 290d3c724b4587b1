"""The installed `dcae` command, as a user runs it (a real process, no torch):
a round trip through files, `inspect` of checked-in files, and every refusal as
one line on stderr, a non-zero exit and no output file left behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dcae_deploy.runtime.imaging import load_image
from dcae_deploy.runtime.metrics import psnr

# the command-line scripts installed next to this interpreter (a venv's bin/)
BIN = Path(sys.executable).parent


def run_dcae(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dcae"), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_one_line_error(done: subprocess.CompletedProcess, code: int = 1) -> str:
    """A refusal: exit status `code`, one line `dcae: error: ...` on stderr, no traceback."""
    assert done.returncode == code, (done.returncode, done.stderr)
    assert done.stderr.startswith("dcae: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.endswith("\n") and "Traceback" not in done.stderr, done.stderr
    return done.stderr


def files_in(folder: Path) -> list[str]:
    """Every file below `folder`, hidden temporaries included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def photo(tmp_path_factory, kodak) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("photo") / "kodim23_crop.png"
    Image.fromarray(kodak("kodim23", 256, 320, 100, 200)).save(path)
    return path


@pytest.fixture(scope="module")
def coded(tmp_path_factory, photo, bundle) -> Path:
    out = tmp_path_factory.mktemp("coded") / "photo.dcae"
    done = run_dcae("compress", photo, "-o", out, "-b", bundle, "--threads", "2")
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
def test_compress_then_decompress_gives_back_the_image(photo, coded, bundle, codec, tmp_path):
    """`dcae compress` writes a portable .dcae of the photo; `dcae decompress`
    writes a PNG of the photo's size at the model's quality, the very pixels
    the Python API decodes from the same file."""
    assert coded.stat().st_size > 100
    out = tmp_path / "photo.png"
    done = run_dcae("decompress", coded, "-o", out, "-b", bundle, "--threads", "2")
    assert done.returncode == 0, done.stderr
    assert f"-> {out}: 256x320" in done.stdout
    original, decoded = load_image(photo), load_image(out)
    assert decoded.shape == original.shape == (256, 320, 3)
    assert psnr(original, decoded) > 28
    assert np.array_equal(decoded, codec.decompress(coded.read_bytes()))
    assert files_in(tmp_path) == ["photo.png"]  # no temporary left


def test_inspect_reads_checked_in_files_without_a_bundle(portable_files):
    folder = sorted(p.parent for p in portable_files.SETS.glob("*/index.json"))[0]
    index = json.loads((folder / "index.json").read_text())
    for name, (_, height, width, _, _) in portable_files.CROPS.items():
        done = run_dcae("inspect", folder / "reference" / f"{name}.dcae", "--json")
        assert done.returncode == 0, done.stderr
        info = json.loads(done.stdout)
        assert (info["format"], info["portable"], info["height"], info["width"]) == ("dcae", True, height, width)
        assert info["fingerprint"] == index["entropy_model_fingerprint"]
        assert info["file_bytes"] == (folder / "reference" / f"{name}.dcae").stat().st_size


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped", "empty", "png", "missing"])
def test_damaged_or_wrong_inputs_to_decompress_are_one_line_and_leave_nothing(damage, coded, photo, bundle,
                                                                                 tmp_path):
    data = coded.read_bytes()
    source = tmp_path / "in.dcae"
    if damage == "truncated":
        source.write_bytes(data[: len(data) // 2])
    elif damage == "bit-flipped":
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x10
        source.write_bytes(bytes(flipped))
    elif damage == "empty":
        source.write_bytes(b"")
    elif damage == "png":
        source = photo
    else:
        source = tmp_path / "nothing.dcae"
    out = tmp_path / "out"
    out.mkdir()
    done = run_dcae("decompress", source, "-o", out / "x.png", "-b", bundle)
    message = assert_one_line_error(done)
    expected = {"truncated": "truncated", "bit-flipped": "CRC mismatch", "empty": "empty file",
                "png": "PNG", "missing": "No such file"}[damage]
    assert expected.lower() in message.lower(), message
    assert files_in(out) == []


def test_bad_inputs_to_compress_are_one_line_and_leave_nothing(photo, bundle, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    out.mkdir()
    for source in ("notes.txt", "empty.png", "broken.png", "missing.png"):
        assert_one_line_error(run_dcae("compress", tmp_path / source, "-o", out / "x.dcae", "-b", bundle))
        assert files_in(out) == []


def test_bundle_and_usage_errors(photo, coded, bundle, tmp_path):
    # not a bundle: a missing folder, a folder without a manifest
    for not_a_bundle in (tmp_path / "no-bundle", tmp_path):
        message = assert_one_line_error(run_dcae("decompress", coded, "-o", tmp_path / "x.png", "-b", not_a_bundle))
        assert "bundle" in message
    assert not (tmp_path / "x.png").exists()
    # command-line mistakes: exit status 2, usage on stderr
    for args in (("compress", photo), ("compress", photo, "-o", tmp_path / "x.dcae", "--threads", "0"),
                 ("compress", photo, "-o", tmp_path / "x.dcae", "--backend", "no-such-backend"), ()):
        done = run_dcae(*args)
        assert done.returncode == 2 and "usage: dcae" in done.stderr and "Traceback" not in done.stderr
    # a backend this machine cannot run: why, in one line
    message = assert_one_line_error(run_dcae("compress", photo, "-o", tmp_path / "x.dcae", "-b", bundle,
                                             "--backend", "tensorrt"))
    assert "TensorRT" in message
    assert files_in(tmp_path) == []


def test_without_a_bundle_or_the_exporter_the_cli_says_what_to_do(photo, tmp_path):
    """No -b, nothing cached, and no exporter (torch blocked here; absent where
    only the base dependencies are installed): one line naming both ways out."""
    script = ("import sys\nsys.modules['torch'] = None\nfrom dcae_deploy.runtime.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", script, "compress", str(photo), "-o", str(tmp_path / "x.dcae")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DCAE_CACHE": str(tmp_path / "cache")})
    message = assert_one_line_error(done)
    assert "-b BUNDLE" in message and "dcae-deploy[reference]" in message
    assert not (tmp_path / "x.dcae").exists()
