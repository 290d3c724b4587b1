"""The CPU's description in /proc/cpuinfo: its feature flags decide which
kernels a library picks (and so its float rounding and whether its int8
arithmetic saturates); its vendor and model name the machine in results."""
from __future__ import annotations

import functools
import os
import platform
from pathlib import Path


# The environment under which PyTorch (ATen) and oneDNN pick their AVX2 kernels
# even on a CPU with AVX-512: in a process started with it, the reference
# computes as an AVX2-only CPU does (another rounding of every float sum), the
# second float path of the portability checks.
AVX2_KERNELS_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# The same for the kernels of an x86-64 CPU without AVX2 (ATen's default
# vectorisation, oneDNN's SSE4.1 code): on an AVX2-only CPU, whose default
# kernels are the AVX2 ones, the float path that differs. Measured on an AMD
# EPYC, embedded model, 24 Kodak images (benchmarks/results/sigma_agreement_amd.md):
# at most 4.1e-6 in ln from the default kernels, at most 4.95e-6 from float64,
# within the reference's stated bound.
SSE41_KERNELS_ENV = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}


@functools.cache
def _first_processor() -> dict[str, str]:
    """The fields of the first processor in /proc/cpuinfo; empty where there is no such file."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    return fields


def cpu_field(name: str) -> str | None:
    """One field of /proc/cpuinfo (e.g. "model name", "vendor_id"), or None."""
    return _first_processor().get(name)


def cpu_flags() -> frozenset[str]:
    """The flags of /proc/cpuinfo (e.g. "avx2", "avx512f", "avx512_vnni");
    empty where there is no such file."""
    return frozenset(_first_processor().get("flags", "").split())


def cpu_model() -> str:
    return cpu_field("model name") or platform.processor() or platform.machine()


def cpu_description() -> str:
    """The CPU model, its widest vector extension and core count: results (and
    the margin measured at export) name it, since float rounding and speed
    differ between CPU families."""
    flags = cpu_flags()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{cpu_model()} ({isa}, {os.cpu_count()} cores)"


def second_float_path() -> tuple[str, dict[str, str]]:
    """("avx2" | "sse41", the environment selecting them): kernels other than
    this CPU's default ones, for a reference that computes as another CPU
    family does. AVX2 where the default is AVX-512, else SSE4.1."""
    if "avx512f" in cpu_flags():
        return "avx2", AVX2_KERNELS_ENV
    return "sse41", SSE41_KERNELS_ENV
