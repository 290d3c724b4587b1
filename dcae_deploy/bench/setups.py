"""What dcae-bench compares: setups, and one encode / decode interface over them.

A setup is either the PyTorch reference ("torch", from the bundles' source
checkpoint; "torch-avx2" and "torch-sse41", the same with the AVX2 or SSE4.1
kernels other CPU families run; "torch-compile", the same with `torch.compile` on its networks;
"torch-cuda", on a GPU) or one bundle on one runtime backend
("onnxruntime:fp32"). Every
setup asked for is listed in the report; one that cannot run here carries the
reason instead of results, so a missing TensorRT is visible, not dropped.

`open_setup` gives a `SetupCoder` with the same few calls for both kinds:
`encode(pixels, quality=None)` (file bytes, streams, the encoder's indexes
and symbols; `quality` 0..100 as `Codec.encode` takes it, None: 50, the
reference rate), `codes_qualities` (False where the setup writes the
reference rate only: the reference on a GPU, the C++ host),
`decode(data, force)` (pixels and the symbols the decoder read), `timings`
(seconds per stage of the last call, the keys of `Codec.last_timings`).
This module imports torch only when a torch setup is opened, so a runtime
setup's measuring process stays torch-free (its memory is the runtime's).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from dcae_deploy.runtime.codec import Codec

# The shared types, re-exported: callers import them from here or from setup_types.
from .setup_types import (DEFAULT_BACKENDS, SETUP_CAPABILITY, SETUP_ENV, TORCH, TORCH_AVX2,  # noqa: F401
                          TORCH_COMPILE, TORCH_CUDA, TORCH_DEVICES, TORCH_SSE41, BundleInfo, Decoded, Encoded,
                          Setup, environment_in_effect, streams_of)
from .torch_coder import TorchCoder  # noqa: F401 - re-exported


def describe_precision(manifest) -> str:
    if manifest.precision == "fp32" and manifest.entropy_precision == "fp32":
        return "fp32"
    entropy = manifest.precision if manifest.entropy_precision == "same" else "fp32"
    return f"{manifest.precision} (entropy {entropy})"


def bundle_infos(paths: list[str]) -> list[BundleInfo]:
    """Open each bundle's manifest (BundleError if it is not one); labels
    are the directory names, made unique."""
    from dcae_deploy.runtime.manifest import Manifest

    infos, seen = [], {}
    for path in paths:
        manifest = Manifest.read(path)
        label = Path(path).resolve().name
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label}-{seen[label]}"
        infos.append(BundleInfo(label, str(path), manifest.precision, manifest.entropy_precision,
                                manifest.model.get("preset"), manifest.entropy_fingerprint,
                                manifest.source_checkpoint_sha256))
    return infos


# ---- the coders ---------------------------------------------------------------------

class RuntimeCoder:
    """A bundle on a runtime backend, through the product's own calls."""

    def __init__(self, setup: Setup, threads: int | None):
        self.codec = Codec(setup.bundle_path, backend=setup.backend, threads=threads)
        self.codec.load_graphs()  # so that timings never include a graph load
        self.numeric_class = self.codec.backend.numeric_class
        self.num_slices = self.codec.bundle.num_slices

    @property
    def timings(self) -> dict:
        return self.codec.last_timings

    codes_qualities = True

    def encode(self, pixels, quality: float | None = None) -> Encoded:
        result = self.codec.encode(pixels, quality=quality)
        return Encoded(result.data, ".dcae", result.height, result.width, result.indexes, result.symbols)

    def decompress(self, data: bytes) -> np.ndarray:
        # The user's call; .bin files warn that they carry no fingerprint.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.codec.decompress(data)

    def decode(self, data: bytes, force: bool = False, synthesize: bool = True) -> Decoded:
        """`Codec.decode` (its refusals are the cell's refusals)."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = self.codec.decode(data, force=force, synthesize=synthesize)
        return Decoded(result.x, result.symbols.reshape(result.y_hat.shape), [str(w.message) for w in caught])


def open_setup(setup: Setup, threads: int | None, reference=None):
    """A coder for `setup`; a torch setup that needs another environment than
    this process's (torch-avx2, torch-sse41) runs in a worker process started with it."""
    from .cpp_host import CPP_BACKENDS, CppHostCoder

    if setup.kind == TORCH:
        env = SETUP_ENV.get(setup.backend)
        if env and reference is None and not environment_in_effect(env):
            from .torch_subprocess import RemoteTorchCoder

            return RemoteTorchCoder(setup, threads, env)
        return TorchCoder(setup, threads, reference)
    if setup.backend in CPP_BACKENDS:
        return CppHostCoder(setup, threads)
    return RuntimeCoder(setup, threads)
