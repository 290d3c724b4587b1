"""What dcae-bench compares: setups, and one encode / decode interface over them.

A setup is either the PyTorch reference ("torch", from the bundles' source
checkpoint; "torch-avx2" and "torch-sse41", the same with the AVX2 or SSE4.1
kernels other CPU families run; "torch-compile", the same with `torch.compile` on its networks;
"torch-cuda", on a GPU) or one bundle on one runtime backend
("onnxruntime:fp32"). Every
setup asked for is listed in the report; one that cannot run here carries the
reason instead of results, so a missing TensorRT is visible, not dropped.

`open_setup` gives a `SetupCoder` with the same few calls for both kinds:
`encode(pixels)` (file bytes, streams, the encoder's indexes and symbols),
`decode(data, force)` (pixels and the symbols the decoder read), `timings`
(seconds per stage of the last call, the keys of `Codec.last_timings`).
This module imports torch only when a torch setup is opened, so a runtime
setup's measuring process stays torch-free (its memory is the runtime's).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dcae_deploy.runtime.codec import Codec
from dcae_deploy.runtime.container import sniff, unpack, unpack_bin
from dcae_deploy.runtime.cpu import AVX2_KERNELS_ENV, SSE41_KERNELS_ENV

TORCH = "torch"
# The reference on the CPU with PyTorch's and oneDNN's AVX2 kernels: how a CPU
# without AVX-512 computes it (another rounding of every float sum).
TORCH_AVX2 = "torch-avx2"
# With the kernels of an x86-64 CPU without AVX2: on an AVX2-only CPU, where
# torch-avx2 computes exactly as torch, the float path that differs.
TORCH_SSE41 = "torch-sse41"
TORCH_COMPILE = "torch-compile"  # the reference with torch.compile (inductor) on the CPU: a PyTorch user's best
TORCH_CUDA = "torch-cuda"  # the reference on the GPU: upstream's own way of running DCAE
TORCH_DEVICES = {TORCH: "cpu", TORCH_AVX2: "cpu", TORCH_SSE41: "cpu", TORCH_COMPILE: "cpu", TORCH_CUDA: "cuda"}
# Environment a setup's process needs (read by torch once, at its first kernel),
# and the kernels PyTorch then reports (torch.backends.cpu.get_cpu_capability).
SETUP_ENV = {TORCH_AVX2: AVX2_KERNELS_ENV, TORCH_SSE41: SSE41_KERNELS_ENV}
SETUP_CAPABILITY = {TORCH_AVX2: "AVX2", TORCH_SSE41: "DEFAULT"}
DEFAULT_BACKENDS = ("torch", "torch-cuda", "onnxruntime", "onnxruntime-cuda", "tensorrt")


@dataclass
class BundleInfo:
    label: str  # unique short name, from the bundle directory
    path: str
    precision: str
    entropy_precision: str
    preset: str | None
    entropy_fingerprint: str
    source_checkpoint_sha256: str | None


@dataclass
class Setup:
    name: str  # "torch", "torch-avx2", "torch-compile", "torch-cuda" or "<backend>:<bundle label>"
    kind: str  # "torch" (the PyTorch reference: backend torch, torch-avx2, torch-compile or torch-cuda) | "runtime"
    backend: str
    precision: str  # as a reader wants it: "fp32", "fp16 (entropy fp32)", ...
    bundle: str | None = None  # bundle label
    bundle_path: str | None = None
    checkpoint: str | None = None  # torch only
    available: bool = True
    reason: str | None = None  # why not available
    numeric_class: str | None = None
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


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

@dataclass
class Encoded:
    data: bytes  # the file: .dcae (runtime) or upstream .bin (torch)
    suffix: str
    height: int
    width: int
    indexes: np.ndarray  # int32 (1, M, h, w)
    symbols: np.ndarray  # int32 (1, M, h, w)


@dataclass
class Decoded:
    x: np.ndarray | None  # uint8 (H, W, 3); None from decode(..., synthesize=False)
    symbols: np.ndarray  # int32 (1, M, h, w): what the decoder read from the stream
    warnings: list = field(default_factory=list)


def streams_of(data: bytes) -> tuple[bytes, bytes, int, int]:
    """(y, z, height, width) of a .dcae or .bin (CorruptStreamError if neither)."""
    if sniff(data) == "bin":
        parsed = unpack_bin(data)
        return parsed.y, parsed.z, parsed.height, parsed.width
    parsed = unpack(data)
    return parsed.y, parsed.z, parsed.header.height, parsed.header.width


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

    def encode(self, pixels) -> Encoded:
        result = self.codec.encode(pixels)
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


class TorchCoder:
    """The PyTorch reference: writes portable .dcae (upstream .bin on a GPU);
    decodes portable .dcae with the runtime's checks (`dcae.coding.decode_dcae`)
    and .bin with compressai's decoder."""

    def __init__(self, setup: Setup, threads: int | None, reference=None):
        from .torch_reference import TorchReference

        if setup.backend in SETUP_ENV:
            _check_kernels(setup.backend)
        self.reference = reference or TorchReference(setup.checkpoint, threads, TORCH_DEVICES[setup.backend],
                                                     compile=setup.backend == TORCH_COMPILE)
        self.numeric_class = self.reference.numeric_class
        if setup.backend in SETUP_ENV:
            self.numeric_class += "-" + setup.backend.removeprefix("torch-")
        # torch.compile compiles at the first call of each piece: the measurement
        # counts the first image's warm-up as load time (dcae_deploy.bench.measure)
        self.compiles_on_first_call = bool(self.reference.compiled)
        self.num_slices = self.reference.model.num_slices

    @property
    def timings(self) -> dict:
        return self.reference.last_timings

    def encode(self, pixels) -> Encoded:
        result = self.reference.encode(pixels)
        suffix = ".dcae" if sniff(result.data) == "dcae" else ".bin"
        return Encoded(result.data, suffix, result.height, result.width, result.indexes, result.symbols)

    def decompress(self, data: bytes) -> np.ndarray:
        return self.decode(data).x

    def decode(self, data: bytes, force: bool = False, synthesize: bool = True) -> Decoded:
        if sniff(data) == "dcae":
            # Portable files only (others are refused): the runtime's rANS
            # decoder and side-stream checks, so a desync is an error.
            pixels, symbols = self.reference.decode_portable(data, synthesize)
            return Decoded(pixels, symbols.reshape(self._latent_shape(data)))
        result = self.reference.decode_streams(*streams_of(data), synthesize=synthesize)
        return Decoded(result.x, result.symbols)

    def _latent_shape(self, data: bytes) -> tuple:
        height, width = unpack(data).header.padded_size
        return (1, self.reference.model.config.M, height // 16, width // 16)


def environment_in_effect(env: dict[str, str]) -> bool:
    return all(os.environ.get(k) == v for k, v in env.items())


def _check_kernels(backend: str) -> None:
    """torch-avx2 or torch-sse41 in this process: only if torch did pick those kernels."""
    import torch

    from dcae_deploy.runtime.errors import BackendUnavailableError

    capability = torch.backends.cpu.get_cpu_capability()
    wanted = SETUP_CAPABILITY[backend]
    if not environment_in_effect(SETUP_ENV[backend]) or capability != wanted:
        raise BackendUnavailableError(
            f"{backend} unavailable: PyTorch runs its {capability} kernels in this process (the {wanted} ones need "
            f"{' '.join(f'{k}={v}' for k, v in SETUP_ENV[backend].items())} at process start"
            f"{', and a CPU with AVX2' if wanted == 'AVX2' else ''})")


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
