"""Portable `.dcae` files written on one machine, kept to be decoded on others.

A file's decodability across CPU families is a claim about two machines; CI
runs on one. So each machine kind writes a set of files once, with the
embedded model, and checks them in under `tests/data/portable/<cpu>/`, named
after the CPU that wrote it (vendor, family, widest vector extension and the
extensions that change its float path: e.g. amd-epyc-avx512-vnni-bf16;
`index.json` names the CPU, the entropy model, and each file's writer and the
SHA-256 of the symbols its encoder coded). `tests/test_portable.py` decodes
every set on the machine it runs on, with every decoder there, and compares
the symbols. Sets from other CPU families are what make that a cross-machine
test: add one from each kind of machine the project runs on.

    python -m tests.portable_files write [--name NAME]   # this machine's set

Writers: the reference (PyTorch, this CPU's default kernels), the runtime on
onnxruntime and on OpenVINO (the C++ host computes as the latter). When the
embedded model changes, every set must be rewritten (their files belong to
the old entropy model), and so must every set when the `.dcae` format changes
(decoders refuse files of an earlier format).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
SETS = DATA / "portable"
# name: (Kodak image, height, width, top, left): crops down to 1x1
CROPS = {"kodim01_256x384": ("kodim01", 256, 384, 100, 200), "kodim03_197x253": ("kodim03", 197, 253, 40, 300),
         "kodim04_1x1": ("kodim04", 1, 1, 300, 300), "kodim02_37x53": ("kodim02", 37, 53, 10, 10)}
RUNTIME_WRITERS = ("onnxruntime", "openvino")


def crop(name: str) -> np.ndarray:
    from PIL import Image

    source, h, w, top, left = CROPS[name]
    pixels = np.asarray(Image.open(DATA / "kodak" / f"{source}.png").convert("RGB"))
    return np.ascontiguousarray(pixels[top : top + h, left : left + w])


def symbols_digest(symbols: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(symbols, "<i4").reshape(-1).tobytes()).hexdigest()


# The extensions besides the widest vector one that change which kernels (so
# which float rounding) the writers' libraries pick.
FLOAT_PATH_EXTENSIONS = {"avx512_vnni": "vnni", "avx512_bf16": "bf16", "amx_tile": "amx"}


def default_name() -> str:
    """This CPU, as a set's folder name: vendor, family, widest vector
    extension and the extensions that change its float path."""
    from dcae_deploy.runtime.cpu import cpu_field, cpu_flags, cpu_model

    vendor = {"AuthenticAMD": "amd", "GenuineIntel": "intel"}.get(cpu_field("vendor_id") or "", platform.machine())
    words = [w.lower() for w in re.sub(r"\((R|TM)\)", "", cpu_model()).split()]
    family = next((w for w in words if w.isalpha() and w != vendor), None)
    flags = cpu_flags()
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else platform.machine()
    extensions = [name for flag, name in FLOAT_PATH_EXTENSIONS.items() if flag in flags]
    return "-".join([vendor, *([family] if family else []), isa, *extensions])


def write(out: Path) -> dict:
    """This machine's set: every writer's file of every crop, and the index."""
    from dcae_deploy.bench.machine import cpu_description
    from dcae import load_checkpoint
    from dcae.coding import encode_image
    from dcae_deploy.export.export import export_bundle
    from dcae_deploy.runtime import Codec
    from dcae_deploy.runtime.cpu import cpu_flags
    from dcae_deploy.runtime.manifest import Manifest

    model = load_checkpoint().eval()
    files = {}
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dcae-portable-") as tmp:
        bundle = Path(tmp) / "bundle"
        export_bundle(model, bundle, progress=lambda *a, **k: None, preset="small", threads=1)
        manifest = Manifest.read(bundle)
        for name in CROPS:
            image = crop(name)
            data, latents = encode_image(model, image, format="dcae", margin=manifest.portable_margin)
            files[f"reference/{name}.dcae"] = (data, latents["symbols"].numpy())
        for backend in RUNTIME_WRITERS:
            codec = Codec(bundle, backend=backend, threads=1)
            for name in CROPS:
                result = codec.encode(crop(name))
                files[f"{backend}/{name}.dcae"] = (result.data, result.symbols)
    index = {"cpu": cpu_description(),
             "float_path_flags": [flag for flag in ("avx2", "avx512f", *FLOAT_PATH_EXTENSIONS) if flag in cpu_flags()],
             "entropy_model_fingerprint": manifest.entropy_model_fingerprint,
             "margin": manifest.portable_margin, "files": {}}
    for relative, (data, symbols) in files.items():
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        (out / relative).write_bytes(data)
        index["files"][relative] = {"writer": relative.split("/")[0], "symbols_sha256": symbols_digest(symbols),
                                    "symbols": int(np.asarray(symbols).size)}
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.portable_files", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["write"])
    parser.add_argument("--name", default=None, help="the set's folder under tests/data/portable "
                                                     "(default: this CPU, e.g. amd-epyc-avx512-vnni-bf16)")
    args = parser.parse_args(argv)
    out = SETS / (args.name or default_name())
    index = write(out)
    print(f"{len(index['files'])} files from {index['cpu']} in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
