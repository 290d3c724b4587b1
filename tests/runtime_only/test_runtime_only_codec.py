"""The runtime's codec on its own (no torch): checked-in files written on other
machines decode to their encoders' symbols, a round trip gives back the
encoder's latent and the image, and damaged files are refused."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from dcae_deploy.runtime.container import unpack
from dcae_deploy.runtime.errors import CorruptStreamError, DcaeError
from dcae_deploy.runtime.manifest import Manifest
from dcae_deploy.runtime.metrics import bpp, psnr


def _sets(portable_files) -> list[Path]:
    sets = sorted(p.parent for p in portable_files.SETS.glob("*/index.json"))
    assert sets, f"no checked-in portable files under {portable_files.SETS}"
    return sets


def test_checked_in_files_decode_to_their_encoders_symbols_and_to_the_image(codec, bundle, portable_files):
    """Every file of every checked-in set (tests/data/portable/<cpu>/: the
    reference, the runtime on onnxruntime and on OpenVINO, each on its own
    machine) decodes here to exactly the symbols its encoder coded (SHA-256
    in the set's index); files whose encoders coded the same symbols decode to
    the same pixels, byte for byte; and the pixels are the crop's image."""
    fingerprint = Manifest.read(bundle).entropy_model_fingerprint
    decoded = 0
    for folder in _sets(portable_files):
        index = json.loads((folder / "index.json").read_text())
        assert index["entropy_model_fingerprint"] == fingerprint, (
            f"{folder.name} was written with another model than the bundle's: the bundle must be the embedded "
            f"model's (dcae-export -o DIR), and every set must be rewritten when that model changes")
        by_crop = defaultdict(dict)  # crop -> {symbols digest: pixels}
        for relative, entry in index["files"].items():
            data = (folder / relative).read_bytes()
            result = codec.decode(data)
            name = Path(relative).stem
            assert portable_files.symbols_digest(result.symbols) == entry["symbols_sha256"], (
                f"{folder.name}/{relative}: other symbols than its encoder's")
            assert result.symbols.size == entry["symbols"]
            image = portable_files.crop(name)
            assert result.x.shape == image.shape and result.x.dtype == np.uint8
            if image.shape[0] * image.shape[1] >= 32 * 32:  # a 1x1 crop's "PSNR" says nothing
                assert psnr(image, result.x) > 25, f"{folder.name}/{relative}: {psnr(image, result.x):.2f} dB"
            same = by_crop[name].setdefault(entry["symbols_sha256"], result.x)
            assert np.array_equal(same, result.x), f"{folder.name}/{relative}: same symbols, other pixels"
            decoded += 1
    assert decoded >= 3 * len(portable_files.CROPS)


@pytest.mark.parametrize("name, size", [("kodim23", None), ("kodim05", (131, 203, 17, 29)),
                                        ("kodim19", (64, 64, 300, 200)), ("kodim07", (1, 5, 10, 10))])
@pytest.mark.slow
def test_round_trip_gives_back_the_encoders_latent_and_the_image(codec, kodak, name, size):
    """compress -> decompress: the decoder reads exactly the encoder's symbols
    and rebuilds its y_hat bit for bit; the image comes back at its size, at
    the embedded model's quality (kodim23 whole: 34.1 dB at 0.35 bpp here)."""
    image = kodak(name, *size) if size else kodak(name)
    encoded = codec.encode(image)
    assert unpack(encoded.data).header.portable  # the default: a file any setup decodes
    decoded = codec.decode(encoded.data)
    assert np.array_equal(decoded.symbols, encoded.symbols.reshape(-1))
    assert np.array_equal(decoded.y_hat, encoded.y_hat)
    assert decoded.x.shape == image.shape and decoded.x.dtype == np.uint8
    assert np.array_equal(codec.decompress(encoded.data), decoded.x)  # deterministic
    height, width = image.shape[:2]
    if size is None:  # a whole Kodak photo: the figures of benchmarks/results/kodak_rd.md's model
        assert psnr(image, decoded.x) > 32 and 0.2 < bpp(len(encoded.data), height, width) < 0.6
    elif height * width >= 32 * 32:
        assert psnr(image, decoded.x) > 26 and bpp(len(encoded.data), height, width) < 3


def test_damaged_files_are_refused_in_one_line(codec, portable_files):
    """Every single-bit flip of a real file (each bit of its header, 100 of its
    payload) and every truncation is refused with a one-line CorruptStreamError,
    never decoded to an image."""
    folder = _sets(portable_files)[0]
    data = (folder / "onnxruntime" / "kodim02_37x53.dcae").read_bytes()
    rng = np.random.default_rng(0)
    bits = list(range(64 * 8)) + sorted(rng.choice(np.arange(64 * 8, len(data) * 8), 100, replace=False).tolist())
    damaged = []
    for bit in bits:
        mutant = bytearray(data)
        mutant[bit // 8] ^= 1 << (bit % 8)
        damaged.append(bytes(mutant))
    damaged += [data[:n] for n in range(0, len(data), 37)] + [data[:-1], data + b"\0"]
    for mutant in damaged:
        with pytest.raises(CorruptStreamError) as info:
            codec.decode(mutant)
        assert "\n" not in str(info.value) and str(info.value)
    assert issubclass(CorruptStreamError, DcaeError)


def test_the_runtime_codes_with_torch_and_every_other_package_blocked(bundle, kodak, tmp_path):
    """A process in which torch, the reference (dcae) and the other dcae_deploy
    packages cannot be imported compresses and decompresses with the CLI."""
    from PIL import Image

    Image.fromarray(kodak("kodim01", 48, 64)).save(tmp_path / "a.png")
    script = (
        "import sys\n"
        "for name in ('torch', 'torchvision', 'compressai', 'dcae', 'dcae_deploy.export', "
        "'dcae_deploy.calibration', 'dcae_deploy.bench'):\n"
        "    sys.modules[name] = None\n"
        "from dcae_deploy.runtime.cli import main\n"
        "a = main(['compress', sys.argv[1], '-o', sys.argv[2], '-b', sys.argv[4], '--threads', '1'])\n"
        "b = main(['decompress', sys.argv[2], '-o', sys.argv[3], '-b', sys.argv[4], '--threads', '1'])\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
        "sys.exit(a or b)\n")
    done = subprocess.run([sys.executable, "-c", script, tmp_path / "a.png", tmp_path / "a.dcae",
                           tmp_path / "a_out.png", bundle], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a.dcae").is_file() and (tmp_path / "a_out.png").is_file()
