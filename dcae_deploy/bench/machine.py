"""Facts about the machine a report was measured on.

Timings mean little without them: the CPU model, how many cores this process
may use, the load average before and after (another job on the machine slows
every setup), the GPU if any, and the versions of every library involved.
"""
from __future__ import annotations

import importlib
import os
import platform

# The CPU's model and description live in the runtime (the exporter names the
# CPU of the margin it measures, and must not import the benchmarks).
from dcae_deploy.runtime.cpu import cpu_description, cpu_model  # noqa: F401 - re-exported


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
    from dcae_deploy.runtime.errors import BackendUnavailableError
    from dcae_deploy.runtime.gpu import probe_gpu

    try:
        info = probe_gpu()
    except BackendUnavailableError as exc:
        return f"none ({exc})"
    return f"{info.name} (compute capability {info.compute_capability}, CUDA {info.driver_cuda_version})"


def installed_version(module) -> str | None:
    """The imported module's version: its `__version__`, else (pytorch_msssim
    has none) the version of the installed distribution that provides it;
    None when neither says."""
    version = getattr(module, "__version__", None)
    if version:
        return str(version)
    from importlib import metadata

    # the distribution's name is not always the module's (PIL: pillow)
    for distribution in metadata.packages_distributions().get(module.__name__.partition(".")[0], []):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in ("numpy", "onnxruntime", "onnx", "torch", "compressai", "numba", "PIL", "matplotlib",
                 "pytorch_msssim", "tensorrt"):
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a missing or broken optional library is a fact too
            versions[name] = f"not available ({type(exc).__name__})"
            continue
        version = installed_version(module)
        if version is not None:  # a version we cannot tell is left out rather than shown as "?"
            versions[name] = version
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
