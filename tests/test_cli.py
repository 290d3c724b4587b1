"""The `dcae` command line: compress / decompress / inspect, and its refusals.

Commands run in-process through `dcae_deploy.runtime.cli.main` (fast), plus one real
subprocess to check what a user's terminal sees.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dcae_deploy.runtime import cli, default_bundle
from dcae_deploy.runtime.container import unpack
from dcae_deploy.runtime.manifest import Manifest
from dcae_deploy.runtime.portable import decode_side_stream

REPO = Path(__file__).resolve().parent.parent


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *, expected_code: int = 1) -> None:
    assert code == expected_code
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "no error message"
    assert all(line.startswith("dcae: error: ") for line in lines), err
    assert "Traceback" not in err


def files_in(directory: Path) -> list[str]:
    """Every file below `directory`, hidden temporaries included."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def images(tmp_path_factory, kodak_crop) -> Path:
    """A directory of three small PNGs (one grayscale), and a non-image file."""
    folder = tmp_path_factory.mktemp("images")
    Image.fromarray(kodak_crop("kodim01", 40, 60)).save(folder / "a.png")
    Image.fromarray(kodak_crop("kodim02", 33, 17)).save(folder / "b.png")
    Image.fromarray(kodak_crop("kodim03", 20, 20)[:, :, 0]).save(folder / "c.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def coded(tmp_path_factory, images, tiny_bundle) -> Path:
    """a.png compressed once with the CLI."""
    out = tmp_path_factory.mktemp("coded") / "a.dcae"
    assert cli.main(["compress", str(images / "a.png"), "-o", str(out), "-b", str(tiny_bundle), "--threads", "1"]) == 0
    return out


# ---- the happy paths ---------------------------------------------------------------------

def test_compress_decompress_one_file(capsys, tmp_path, images, tiny_bundle):
    code, out, err = run_cli(capsys, "compress", images / "a.png", "-o", tmp_path / "a.dcae", "-b", tiny_bundle,
                             "--threads", "1")
    assert code == 0, err
    data = (tmp_path / "a.dcae").read_bytes()
    assert f"{len(data)} bytes" in out and "bpp" in out
    assert (unpack(data).header.height, unpack(data).header.width) == (40, 60)

    code, out, err = run_cli(capsys, "decompress", tmp_path / "a.dcae", "-o", tmp_path / "a.png", "-b", tiny_bundle)
    assert code == 0, err
    assert np.asarray(Image.open(tmp_path / "a.png")).shape == (40, 60, 3)
    assert files_in(tmp_path) == ["a.dcae", "a.png"]


def test_directories_and_globs(capsys, tmp_path, images, tiny_bundle):
    code, out, err = run_cli(capsys, "compress", images, "-o", tmp_path / "coded", "-b", tiny_bundle, "--threads", "1")
    assert code == 0, err
    assert files_in(tmp_path / "coded") == ["a.dcae", "b.dcae", "c.dcae"]
    assert len(out.splitlines()) == 3

    code, out, err = run_cli(capsys, "decompress", tmp_path / "coded", "-o", tmp_path / "decoded", "-b", tiny_bundle)
    assert code == 0, err
    assert files_in(tmp_path / "decoded") == ["a.png", "b.png", "c.png"]
    assert np.asarray(Image.open(tmp_path / "decoded" / "b.png")).shape == (33, 17, 3)

    # a quoted glob, and one file into an existing directory
    code, _, err = run_cli(capsys, "compress", str(images / "[ab].png"), "-o", tmp_path / "globbed", "-b", tiny_bundle)
    assert code == 0, err
    assert files_in(tmp_path / "globbed") == ["a.dcae", "b.dcae"]
    code, _, err = run_cli(capsys, "decompress", tmp_path / "coded" / "c.dcae", "-o", tmp_path / "globbed",
                           "-b", tiny_bundle)
    assert code == 0, err
    assert "c.png" in files_in(tmp_path / "globbed")


def test_relative_paths_from_another_directory(capsys, tmp_path, monkeypatch, images, tiny_bundle):
    """Inputs, -o and -b relative to a working directory that holds none of them."""
    monkeypatch.chdir(tmp_path)
    image, bundle = os.path.relpath(images / "a.png"), os.path.relpath(tiny_bundle)
    code, out, err = run_cli(capsys, "compress", image, "-o", "coded/", "-b", bundle, "--threads", "1")
    assert code == 0, err
    assert files_in(tmp_path / "coded") == ["a.dcae"]
    assert out.startswith(f"{image} -> {Path('coded', 'a.dcae')}:")  # named as the user named them

    code, _, err = run_cli(capsys, "decompress", "coded", "-o", "decoded", "-b", bundle)
    assert code == 0, err
    assert np.asarray(Image.open(tmp_path / "decoded" / "a.png")).shape == (40, 60, 3)
    code, out, err = run_cli(capsys, "inspect", Path("coded", "a.dcae"), "--json")
    assert code == 0, err
    assert (json.loads(out)["height"], json.loads(out)["width"]) == (40, 60)


def test_inspect(capsys, coded, tiny_bundle):
    code, out, err = run_cli(capsys, "inspect", coded)
    assert code == 0, err
    assert "40x60" in out and "fingerprint" in out and "sha256" in out

    code, out, _ = run_cli(capsys, "inspect", coded, "--json")
    info = json.loads(out)
    parsed = unpack(coded.read_bytes())
    assert info["format"] == "dcae" and info["version"] == 3 and info["flags"] == 0b10 and info["portable"]
    assert info["gain_code"] == 4096 and info["gain"] == 1.0
    assert info["margin"] == pytest.approx(Manifest.read(tiny_bundle).portable_margin)
    assert info["side_bytes"] == len(parsed.side)
    side = decode_side_stream(parsed.side, None)
    assert info["side_marked"] == side.positions.size and info["threshold_shifts"] == side.shifts.count
    assert (info["height"], info["width"], info["padded_height"], info["padded_width"]) == (40, 60, 256, 256)
    assert (info["z_height"], info["z_width"]) == (4, 4)
    assert info["fingerprint"] == parsed.header.fingerprint.hex()
    assert info["y_bytes"] == len(parsed.y) and info["z_bytes"] == len(parsed.z)
    assert info["bpp"] == pytest.approx(8 * coded.stat().st_size / (40 * 60))
    import hashlib

    assert info["y_sha256"] == hashlib.sha256(parsed.y).hexdigest()
    assert info["z_sha256"] == hashlib.sha256(parsed.z).hexdigest()


def _patched(data: bytes, offset: int, code: str, value) -> bytes:
    """`data` with one header field replaced and its CRC repaired."""
    changed = bytearray(data)
    struct.pack_into("<" + code, changed, offset, value)
    struct.pack_into("<I", changed, 60, zlib.crc32(bytes(changed[64:]), zlib.crc32(bytes(changed[:60]))))
    return bytes(changed)


def test_inspect_shows_the_gain(capsys, tmp_path, coded):
    path = tmp_path / "gain2.dcae"
    path.write_bytes(_patched(coded.read_bytes(), 6, "H", 8192))
    code, out, err = run_cli(capsys, "inspect", path, "--json")
    assert code == 0, err
    assert (json.loads(out)["gain_code"], json.loads(out)["gain"]) == (8192, 2.0)
    code, out, err = run_cli(capsys, "inspect", path)
    assert code == 0 and "2 (gain_code 8192)" in out


def test_inspect_and_decompress_an_upstream_bin(capsys, tmp_path, images, tiny_bundle):
    from dcae_deploy.runtime import Codec
    from dcae_deploy.runtime.container import pack_bin

    # The streams of a file for this setup only: its y symbols are coded with
    # the indexes the decoder computes (no threshold shifts).
    parsed = unpack(Codec(tiny_bundle, threads=1).compress(images / "a.png", margin=None))
    path = tmp_path / "a.bin"
    path.write_bytes(pack_bin(40, 60, parsed.y, parsed.z))
    code, out, _ = run_cli(capsys, "inspect", path, "--json")
    assert code == 0 and json.loads(out)["format"] == "bin" and json.loads(out)["fingerprint"] is None
    code, out, err = run_cli(capsys, "decompress", path, "-o", tmp_path / "a.png", "-b", tiny_bundle)
    assert code == 0
    assert err.startswith("dcae: warning: ") and "upstream .bin" in err and "Traceback" not in err
    assert (tmp_path / "a.png").is_file()


def test_help_explains_every_option(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "compress" in out and "DCAE_CACHE" in out
    code, out, _ = run_cli(capsys, "compress", "--help")
    assert code == 0
    for option in ("-o", "-b", "--backend", "--threads"):
        assert option in out
    code, out, _ = run_cli(capsys, "decompress", "--help")
    assert code == 0 and "--force" in out


# ---- refusals: one line, non-zero, nothing left behind -----------------------------------

@pytest.mark.parametrize("case", ["empty", "truncated", "png", "directory-as-file", "missing-input", "format-2",
                                  "gain-2"])
def test_bad_inputs_to_decompress(capsys, tmp_path, coded, images, tiny_bundle, case):
    source = tmp_path / "in.dcae"
    if case == "format-2":
        source.write_bytes(_patched(coded.read_bytes(), 4, "B", 2))
    elif case == "gain-2":
        source.write_bytes(_patched(coded.read_bytes(), 6, "H", 8192))
    elif case == "empty":
        source.write_bytes(b"")
    elif case == "truncated":
        source.write_bytes(coded.read_bytes()[:-10])
    elif case == "png":
        source = images / "a.png"
    elif case == "directory-as-file":
        source = tmp_path / "somedir.dcae"
        source.mkdir()
    else:
        source = tmp_path / "nothing.dcae"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = files_in(tmp_path)
    code, _, err = run_cli(capsys, "decompress", source, "-o", out_dir / "x.png", "-b", tiny_bundle)
    assert_one_line_error(code, err)
    assert files_in(tmp_path) == before
    words = {"format-2": "format version 2 predates this decoder's format 3; re-encode the image",
             # the y stream was coded at gain 1: read at gain 2 its scales fall elsewhere
             "gain-2": "decoder's scales"}
    assert words.get(case, "") in err


def test_bad_inputs_to_compress(capsys, tmp_path, images, tiny_bundle):
    out = tmp_path / "out"
    out.mkdir()
    cases = [
        images / "notes.txt",  # not an image
        tmp_path / "missing.png",  # no such file
        str(tmp_path / "*.nothing"),  # a glob that matches nothing
    ]
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    cases.append(empty)
    for source in cases:
        code, _, err = run_cli(capsys, "compress", source, "-o", out / "x.dcae", "-b", tiny_bundle)
        assert_one_line_error(code, err)
        assert files_in(out) == []


def test_one_bad_file_in_a_batch(capsys, tmp_path, images, tiny_bundle):
    folder = tmp_path / "in"
    shutil.copytree(images, folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, out, err = run_cli(capsys, "compress", folder, "-o", tmp_path / "out", "-b", tiny_bundle)
    assert_one_line_error(code, err)
    assert "broken.png" in err
    # the others are written, the broken one is not
    assert files_in(tmp_path / "out") == ["a.dcae", "b.dcae", "c.dcae"]


def test_missing_or_broken_bundle(capsys, tmp_path, coded):
    for bundle in (tmp_path / "no-bundle", tmp_path):
        code, _, err = run_cli(capsys, "decompress", coded, "-o", tmp_path / "x.png", "-b", bundle)
        assert_one_line_error(code, err)
        assert "bundle" in err
        assert not (tmp_path / "x.png").exists()


def test_output_collisions_and_usage_errors(capsys, tmp_path, images, tiny_bundle):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(images / "a.png", other / "a.png")
    code, _, err = run_cli(capsys, "compress", images / "a.png", other / "a.png", "-o", tmp_path / "out",
                           "-b", tiny_bundle)
    assert_one_line_error(code, err, expected_code=2)
    assert "both write" in err and not (tmp_path / "out").exists()

    code, _, err = run_cli(capsys, "compress", images / "a.png")  # no -o
    assert code == 2 and "Traceback" not in err
    code, _, err = run_cli(capsys, "compress", images / "a.png", "-o", tmp_path / "x", "--threads", "0")
    assert code == 2
    code, _, err = run_cli(capsys, "compress", images / "a.png", "-o", tmp_path / "x", "--backend", "tensorrt",
                           "-b", tiny_bundle)
    assert_one_line_error(code, err)
    assert "TensorRT" in err
    code, _, err = run_cli(capsys)
    assert code == 2


def test_fingerprint_mismatch_and_force(capsys, tmp_path, images, tiny_bundle):
    from dcae_deploy.runtime import Codec
    from dcae_deploy.runtime.container import DcaeHeader, pack

    parsed = unpack(Codec(tiny_bundle, threads=1).compress(images / "a.png", margin=None))  # for this setup only
    other = bytes(b ^ 0xFF for b in parsed.header.fingerprint)  # a sound file from "another setup"
    path = tmp_path / "other.dcae"
    path.write_bytes(pack(DcaeHeader(parsed.header.height, parsed.header.width, other), parsed.z, parsed.y))
    code, _, err = run_cli(capsys, "decompress", path, "-o", tmp_path / "x.png", "-b", tiny_bundle)
    assert_one_line_error(code, err)
    assert "another bundle, backend or precision" in err
    assert not (tmp_path / "x.png").exists()
    code, _, err = run_cli(capsys, "decompress", path, "-o", tmp_path / "x.png", "-b", tiny_bundle, "--force")
    assert code == 0 and "warning" in err and (tmp_path / "x.png").is_file()


def test_unwritable_output_is_one_line(capsys, tmp_path, images, tiny_bundle):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, "compress", images / "a.png", "-o", blocker / "x.dcae", "-b", tiny_bundle)
    assert_one_line_error(code, err)


# ---- the default bundle -------------------------------------------------------------------------

def test_default_bundle_from_the_cache(capsys, tmp_path, monkeypatch, images, tiny_bundle):
    monkeypatch.setenv("DCAE_CACHE", str(tmp_path / "cache"))
    path = default_bundle.default_bundle_path()
    assert path.parent == tmp_path / "cache" / "bundles" and path.name.startswith("default-fp32-")
    shutil.copytree(tiny_bundle, path)
    monkeypatch.setattr(default_bundle, "_run_exporter", lambda out: pytest.fail("must not export"))
    code, _, err = run_cli(capsys, "compress", images / "a.png", "-o", tmp_path / "a.dcae")
    assert code == 0, err


def test_default_bundle_tag_follows_the_exporter_source(monkeypatch, tmp_path):
    """A bundle cached by an older exporter is not reused: the cache tag
    changes with the source of the packages that write the graphs."""
    monkeypatch.setenv("DCAE_CACHE", str(tmp_path / "cache"))
    before = default_bundle.default_bundle_path()
    assert default_bundle.default_bundle_path() == before  # stable while nothing changes
    copy = tmp_path / "export"
    shutil.copytree(default_bundle._package_dir("dcae_deploy.export"), copy,
                    ignore=shutil.ignore_patterns("__pycache__"))
    real = default_bundle._package_dir
    monkeypatch.setattr(default_bundle, "_package_dir",
                        lambda name: copy if name == "dcae_deploy.export" else real(name))
    assert default_bundle.default_bundle_path() == before  # same source, same tag
    (copy / "rewrites.py").write_text((copy / "rewrites.py").read_text() + "\n# changed\n")
    assert default_bundle.default_bundle_path() != before


def test_default_bundle_without_the_exporter_says_what_to_do(capsys, tmp_path, monkeypatch, images):
    monkeypatch.setenv("DCAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(default_bundle, "exporter_available", lambda: False)
    code, _, err = run_cli(capsys, "compress", images / "a.png", "-o", tmp_path / "a.dcae")
    assert_one_line_error(code, err)
    assert "-b BUNDLE" in err and "dcae-deploy[reference]" in err
    assert not (tmp_path / "a.dcae").exists()


def test_default_bundle_export_runs_in_a_subprocess_and_lands_atomically(monkeypatch, tmp_path, tiny_bundle):
    monkeypatch.setenv("DCAE_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_export(out: Path) -> None:  # what `dcae-export -o out --quiet` leaves
        calls.append(out)
        shutil.copytree(tiny_bundle, out)

    monkeypatch.setattr(default_bundle, "_run_exporter", fake_export)
    path = default_bundle.ensure_default_bundle()
    assert calls and calls[0] != path and (path / "manifest.json").is_file()
    assert files_in(path.parent) == sorted(f"{path.name}/{f}" for f in files_in(path))  # no staging left
    assert default_bundle.ensure_default_bundle() == path and len(calls) == 1  # cached

    def failing_export(out: Path) -> None:
        raise default_bundle.BundleError("exporting the default bundle failed: boom")

    monkeypatch.setenv("DCAE_CACHE", str(tmp_path / "cache2"))
    monkeypatch.setattr(default_bundle, "_run_exporter", failing_export)
    with pytest.raises(default_bundle.BundleError, match="boom"):
        default_bundle.ensure_default_bundle()
    assert files_in(tmp_path / "cache2") == []


# ---- a real process ---------------------------------------------------------------------------

def test_real_process_prints_one_line_and_exit_status(tmp_path):
    empty = tmp_path / "empty.dcae"
    empty.write_bytes(b"")
    done = subprocess.run([sys.executable, "-m", "dcae_deploy.runtime.cli", "inspect", str(empty)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr == "dcae: error: empty file, not a .dcae file\n"
    done = subprocess.run([sys.executable, "-m", "dcae_deploy.runtime.cli", "inspect", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.startswith("dcae: error: Is a directory")
