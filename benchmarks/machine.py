"""Facts about the machine a report was measured on.

Timings mean little without them: the CPU model, how many cores this process
may use, the load average before and after (another job on the machine slows
every setup), the GPU if any, and the versions of every library involved.
"""
from __future__ import annotations

import importlib
import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def gpu() -> str:
    """The CUDA GPU's name, or "none (<why>)"; asks the driver, not torch."""
    from runtime.errors import BackendUnavailableError
    from runtime.gpu import probe_gpu

    try:
        info = probe_gpu()
    except BackendUnavailableError as exc:
        return f"none ({exc})"
    return f"{info.name} (compute capability {info.compute_capability}, CUDA {info.driver_cuda_version})"


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for module in ("numpy", "onnxruntime", "onnx", "torch", "compressai", "numba", "PIL", "matplotlib",
                   "pytorch_msssim", "tensorrt"):
        try:
            versions[module] = getattr(importlib.import_module(module), "__version__", "?")
        except Exception as exc:  # noqa: BLE001 - a missing or broken optional library is a fact too
            versions[module] = f"not available ({type(exc).__name__})"
    try:
        import onnxruntime

        versions["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    return versions


def machine_facts(threads: int | None) -> dict:
    cores = usable_cores()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": cores,
        "threads": threads if threads else f"library default ({cores} usable cores)",
        "platform": platform.platform(),
        "gpu": gpu(),
        "load_average_start": load_average(),
        "versions": library_versions(),
    }
