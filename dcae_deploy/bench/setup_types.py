"""The types dcae-bench's setups share: what a setup is, and what its coders return.

`setups` opens a setup with one of the coders (`setups.RuntimeCoder`,
`torch_coder.TorchCoder`, `torch_subprocess.RemoteTorchCoder`,
`cpp_host.CppHostCoder`); they all take and return these types, from this
module, so that no coder's module imports `setups` and the bench's modules
import each other one way only. No torch here.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np

from dcae_deploy.runtime.container import GAIN_CODE_ONE, sniff, unpack, unpack_bin
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


# ---- what the coders return ---------------------------------------------------------------------

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


def file_gain_code(data: bytes) -> int:
    """The quality knob's gain code a file was coded at (upstream .bin: the reference rate)."""
    return GAIN_CODE_ONE if sniff(data) == "bin" else unpack(data).header.gain_code


def environment_in_effect(env: dict[str, str]) -> bool:
    return all(os.environ.get(k) == v for k, v in env.items())
