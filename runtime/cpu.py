"""The CPU's feature flags, which decide which kernels a library picks (and so
its float rounding and whether its int8 arithmetic saturates)."""
from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The flags of /proc/cpuinfo (e.g. "avx2", "avx512f", "avx512_vnni");
    empty where there is no such file."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), None)
    return frozenset(line.split(":", 1)[1].split()) if line else frozenset()
