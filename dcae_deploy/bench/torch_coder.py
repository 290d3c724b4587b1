"""The PyTorch reference as a dcae-bench setup, in this process (`TorchCoder`).

`setups.open_setup` opens it, and the worker of `torch_subprocess` runs it
in a process of its own environment. torch is imported only when a coder is
made (`torch_reference` imports it), so that importing this module keeps a
runtime setup's measuring process torch-free.
"""
from __future__ import annotations

import numpy as np

from dcae_deploy.runtime.container import sniff, unpack

from .setup_types import (SETUP_CAPABILITY, SETUP_ENV, TORCH_COMPILE, TORCH_DEVICES, Decoded, Encoded, Setup,
                          environment_in_effect, streams_of)


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

    @property
    def codes_qualities(self) -> bool:
        return self.reference.codes_qualities

    def encode(self, pixels, quality: float | None = None) -> Encoded:
        result = self.reference.encode(pixels, quality)
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
