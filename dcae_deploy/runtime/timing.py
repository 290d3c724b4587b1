"""Per-stage wall-clock timing, shared by the codec and the benchmarks' PyTorch setup."""
from __future__ import annotations

import time
from contextlib import contextmanager


@contextmanager
def timed(timings: dict, stage: str):
    """Add the time spent in the block to `timings[stage]` (stages can repeat)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
