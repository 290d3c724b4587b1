"""The CPU's description in /proc/cpuinfo: its feature flags decide which
kernels a library picks (and so its float rounding and whether its int8
arithmetic saturates); its vendor and model name the machine in results."""
from __future__ import annotations

import functools
from pathlib import Path


# The environment under which PyTorch (ATen) and oneDNN pick their AVX2 kernels
# even on a CPU with AVX-512: in a process started with it, the reference
# computes as an AVX2-only CPU does (another rounding of every float sum), the
# second float path of the portability checks.
AVX2_KERNELS_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


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
