"""What the image transforms (g_a, g_s) cost in memory, and the budget for them.

Their working memory grows with the pixels they run on: window attention at
1/2 scale dominates. How much per pixel is MEASURED, never estimated: the
peak resident memory of a fresh process that loads one graph in onnxruntime
and runs it once, at two image sizes (`MEASURE_SIZES`); the growth between
the two, divided by the pixels added, is the graph's bytes per (padded image)
pixel. The exporter records it in the manifest (`bytes_per_pixel`); for a
bundle written before that, the first codec that needs it measures it and
caches it under $DCAE_CACHE, keyed by the graph files' hashes.

A memory limit is a bound on the whole process's resident memory: when a
transform is planned under one, what the process already holds (its resident
memory measured right then, `resident_memory`: the interpreter, the loaded
graphs, the image's arrays) is taken off it, and the rest is the budget for
the transform's working memory: the tile's activations (bytes per pixel x
tile pixels) plus the whole-image output array the tiles are written into
(`dcae_deploy.runtime.tiling`). Without an explicit limit, the transforms
get `DEFAULT_BUDGET_FRACTION` of the memory the machine has available when
the image is coded (what the process holds is not part of that).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from .errors import BadInputError, BundleError
from .manifest import IMAGE_TRANSFORMS

# Image sizes (padded, H x W) the bytes per pixel are measured at. The peak
# grows in steps (onnxruntime's arena grows in chunks), so the slope between
# two sizes varies a little with the sizes: on the embedded model, 345 B/px
# between 256^2 and 512^2, 349 between 256^2 and 2048^2, 275..430 between
# neighbouring sizes in that range. These two keep the official model's
# measurement to a few seconds and under a GB per process.
MEASURE_SIZES = ((256, 256), (512, 512))
# The graphs that run tiled (dcae_deploy.runtime.tiling), whose memory is measured.
TRANSFORMS = IMAGE_TRANSFORMS
# The share of the machine's available memory the transforms get by default:
# the entropy path, the weights and the rest of the process (and the rest of
# the machine) need the other half.
DEFAULT_BUDGET_FRACTION = 0.5

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'2G', '500M', '1.5GiB', '64k', '1048576' -> bytes (K, M, G, T are powers of 1024)."""
    match = _SIZE.fullmatch(str(text))
    if match is None:
        raise BadInputError(f"expected a size such as 2G, 500M or 1048576 (bytes), got {text!r}")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if value < 1:
        raise BadInputError(f"a memory size must be at least 1 byte, got {text!r}")
    return int(value)


def format_size(size: float) -> str:
    """Bytes -> '1.3G', '640M', '12K', rounded UP, so that the size printed
    is never below the one meant (a 'needs at least' that works when given)."""
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= factor:
            scaled = size / factor
            decimals = 1 if scaled < 100 else 0
            step = 10**decimals
            return f"{-(-scaled * step // 1) / step:.{decimals}f}{unit}"
    return f"{int(-(-size // 1))}"


def proc_field_kib(path: str, field: str) -> int | None:
    """A "Field:  N kB" line of a /proc file (meminfo, self/status), in KiB;
    None where the file or the field is missing."""
    try:
        with open(path) as lines:
            for line in lines:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory() -> int | None:
    """Bytes the machine can give without swapping (MemAvailable), or the
    free physical memory where /proc/meminfo is missing; None if unknown."""
    kib = proc_field_kib("/proc/meminfo", "MemAvailable")
    if kib is not None:
        return kib * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def resident_memory() -> int:
    """Bytes this process holds in memory now (VmRSS); 0 where /proc does not say."""
    kib = proc_field_kib("/proc/self/status", "VmRSS")
    return 0 if kib is None else kib * 1024


def default_budget() -> int | None:
    available = available_memory()
    return None if available is None else int(available * DEFAULT_BUDGET_FRACTION)


# ---- bytes per pixel: measured in a fresh process ------------------------------------------

def _transform_input(bundle, graph: str, height: int, width: int):
    import numpy as np

    from .geometry import Y_DOWNSAMPLE

    # Values do not change the memory; real-looking ranges anyway.
    rng = np.random.default_rng(0)
    if graph == "g_a":
        return {"x": rng.random((1, 3, height, width), dtype=np.float32)}
    shape = (1, bundle.latent_channels, height // Y_DOWNSAMPLE, width // Y_DOWNSAMPLE)
    return {"y_hat": rng.standard_normal(shape, dtype=np.float32)}


def _start_child(bundle_dir: Path, graph: str, height: int, width: int) -> subprocess.Popen:
    """A fresh process that runs `graph` once at height x width and prints its peak RSS."""
    from dcae_deploy import IMPORT_ROOT

    command = [sys.executable, "-m", __name__, str(bundle_dir), graph, str(height), str(width)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(IMPORT_ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _peak(returncode: int, out: str, err: str, what: str) -> int:
    if returncode != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        raise BundleError(f"measuring the memory of {what} failed: "
                          f"{lines[-1].strip() if lines else f'exit status {returncode}'}")
    return int(json.loads(out.strip().splitlines()[-1])["peak_bytes"])


def measure_bytes_per_pixel(bundle_dir: str | Path, graphs=TRANSFORMS, sizes=MEASURE_SIZES) -> dict[str, int]:
    """{graph: bytes per padded image pixel} of the bundle's image transforms
    through onnxruntime: the growth of the peak RSS between two fresh
    processes that run the graph at the two `sizes`. The processes run side
    by side (each one's peak is its own)."""
    (h0, w0), (h1, w1) = sizes
    children = {(graph, size): _start_child(Path(bundle_dir), graph, *size) for graph in graphs for size in sizes}
    done = {key: (*child.communicate(), child.returncode) for key, child in children.items()}  # all reaped
    peaks = {key: _peak(code, out, err, f"{key[0]} at {key[1][0]}x{key[1][1]}")
             for key, (out, err, code) in done.items()}
    # Rounded up: a budget is better a little generous than short.
    return {graph: max(1, -(-(peaks[graph, sizes[1]] - peaks[graph, sizes[0]]) // (h1 * w1 - h0 * w0)))
            for graph in graphs}


def _cache_file(bundle) -> Path:
    import hashlib

    import onnxruntime

    from .default_bundle import cache_dir

    key = hashlib.sha256(":".join([onnxruntime.__version__, repr(MEASURE_SIZES)] + [
        bundle.manifest.graphs[g].sha256 for g in TRANSFORMS]).encode()).hexdigest()[:16]
    return cache_dir() / "transform-memory" / f"{key}.json"


def bytes_per_pixel(bundle) -> dict[str, int]:
    """The bundle's measured {graph: bytes per pixel} for g_a and g_s: from
    its manifest, else from the cache, else measured now (a few seconds to a
    minute, once per bundle) and cached."""
    recorded = bundle.manifest.bytes_per_pixel
    if all(g in recorded for g in TRANSFORMS):
        return {g: recorded[g] for g in TRANSFORMS}
    path = _cache_file(bundle)
    try:
        cached = json.loads(path.read_text())
        if all(isinstance(cached.get(g), int) and cached[g] > 0 for g in TRANSFORMS):
            return {g: cached[g] for g in TRANSFORMS}
    except (OSError, ValueError, AttributeError):
        pass
    measured = measure_bytes_per_pixel(bundle.path)
    try:
        from .fileio import write_atomically

        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(measured).encode())
    except OSError:  # a read-only cache: measure again next time
        pass
    return measured


def peak_rss() -> int:
    """This process's peak resident memory, bytes.

    VmHWM, the high-water mark of the process's own address space, where
    /proc has it: ru_maxrss survives exec, so a process started from a
    large one (an exporter holding torch) would report its parent's size."""
    kib = proc_field_kib("/proc/self/status", "VmHWM")
    if kib is not None:
        return kib * 1024
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB elsewhere


def _main(argv: list[str]) -> int:
    """Child: load one graph of a bundle, run it once, print the peak RSS."""
    from .backends import get_backend
    from .bundle import Bundle

    bundle_dir, graph, height, width = argv[0], argv[1], int(argv[2]), int(argv[3])
    bundle = Bundle.open(bundle_dir)
    # One thread: the measuring processes run side by side.
    session = get_backend("onnxruntime", threads=1).load(bundle.manifest.graphs[graph], bundle.graph_path(graph))
    session.run(_transform_input(bundle, graph, height, width))
    print(json.dumps({"peak_bytes": peak_rss()}))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
