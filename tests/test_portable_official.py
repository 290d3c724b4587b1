"""Portable files of the official configuration (golden weights) between the
reference on another CPU family's kernels and the runtime, at the model's own
margin (`dcae.margin.model_margin`).

The golden weights' scales stray 20 to 40x farther from float64 than the
embedded model's (docs/portable.md): with the embedded model's margin the
runtime refused the reference's files. Here every file must decode to its
encoder's symbols, whichever side wrote it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dcae_deploy.runtime.container import unpack
from dcae_deploy.runtime.cpu import AVX2_KERNELS_ENV
from dcae_deploy.runtime.portable import DEFAULT_MARGIN

REPO = Path(__file__).resolve().parent.parent


def _run_avx2_reference(args: list) -> None:
    """tests.reference_worker in a process on the AVX2 kernels (another CPU
    family's float path on a CPU with AVX-512; the default one on an AVX2 CPU)."""
    env = {**os.environ, **AVX2_KERNELS_ENV, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "tests.reference_worker", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_official_configuration_files_cross_between_the_avx2_reference_and_the_runtime(
        golden_model, golden_bundle, kodak_crop, tmp_path):
    """Reference on AVX2 kernels (a subprocess) -> runtime (onnxruntime, fp32
    bundle) through the Python API and the CLI, at the margin the reference
    computes there (the same as here: the model's margin is the same on every
    machine) and at the bundle's; runtime -> reference on AVX2 kernels;
    the in-process reference's own files -> runtime. Every decode gives the
    encoder's symbols; the API and the CLI give the same pixels."""
    from PIL import Image

    from dcae.checkpoint import save_checkpoint
    from dcae.coding import decode_dcae, encode_image
    from dcae.margin import model_margin
    from dcae_deploy.runtime import Codec
    from dcae_deploy.runtime.cli import main
    from dcae_deploy.runtime.imaging import load_image
    from dcae_deploy.runtime.manifest import Manifest

    bundle, manifest, _ = golden_bundle
    margin = model_margin(golden_model)
    # The fixture's export measures no setups, and still records the model's margin.
    assert Manifest.read(bundle).portable_margin == manifest.portable_margin == margin > DEFAULT_MARGIN

    pixels = kodak_crop("kodim23", 256, 256, top=120, left=260)
    image = tmp_path / "crop.png"
    Image.fromarray(pixels).save(image)
    codec = Codec(bundle, threads=1)
    runtime = codec.encode(pixels)
    assert unpack(runtime.data).header.margin == np.float32(margin)
    (tmp_path / "runtime.dcae").write_bytes(runtime.data)
    reference_data, reference_out = encode_image(golden_model, image, format="dcae")
    assert unpack(reference_data).header.margin == np.float32(margin)

    checkpoint = tmp_path / "golden.pth.tar"
    save_checkpoint(checkpoint, golden_model, "dcae")
    for name in ("own", "bundle"):
        (tmp_path / name).mkdir()
    _run_avx2_reference(["--checkpoint", checkpoint,
                         "encode", tmp_path / "own", image,
                         "+", "encode", "--margin", repr(margin), tmp_path / "bundle", image,
                         "+", "decode", tmp_path / "decoded.npz", tmp_path / "runtime.dcae"])

    # The reference's files on the AVX2 kernels: its own margin (computed on
    # those kernels: the same) and the bundle's.
    avx2 = {name: ((tmp_path / name / "crop.dcae").read_bytes(), np.load(tmp_path / name / "crop.npz"))
            for name in ("own", "bundle")}
    assert not np.array_equal(avx2["own"][1]["scales"], reference_out["scales"].numpy())  # another float path
    assert unpack(avx2["own"][0]).header.margin == np.float32(margin) > DEFAULT_MARGIN
    assert unpack(avx2["bundle"][0]).header.margin == np.float32(margin)
    for name, (data, latents) in avx2.items():
        decoded = codec.decode(data)
        assert np.array_equal(decoded.symbols, latents["symbols"]), name
        assert main(["decompress", "-b", str(bundle), str(tmp_path / name / "crop.dcae"),
                     "-o", str(tmp_path / f"{name}.png"), "--threads", "1"]) == 0
        assert np.array_equal(load_image(tmp_path / f"{name}.png"), decoded.x), name
    own_decoded = codec.decode(reference_data)
    assert np.array_equal(own_decoded.symbols, reference_out["symbols"].numpy().reshape(-1))

    # The runtime's file on the reference with the AVX2 kernels.
    back = np.load(tmp_path / "decoded.npz")
    assert "error_0" not in back.files, str(back["error_0"])
    assert np.array_equal(back["symbols_0"], runtime.symbols.reshape(-1))
    runtime_pixels = codec.decode(runtime.data).x
    # g_s in PyTorch against onnxruntime: the same symbols, pixels within rounding.
    assert np.abs(back["pixels_0"].astype(int) - runtime_pixels.astype(int)).max() <= 2
    assert np.array_equal(decode_dcae(golden_model, runtime.data)[1], back["symbols_0"])
