"""The CUDA pieces the TensorRT backend needs, without torch.

Two layers, both optional at import time:

- `probe_gpu()` asks the NVIDIA driver (libcuda, through ctypes) for the
  first visible device's name and compute capability. It needs no Python
  package, so the exporter and the tests can say "no CUDA GPU visible" on any
  machine, and the builder and the runtime name the GPU the same way (the
  name recorded in a bundle's manifest is compared with this string).
- `cudart()` imports cuda-python's runtime bindings (`cuda.bindings.runtime`,
  or `cuda.cudart` in cuda-python < 12.6) for device memory, copies, streams
  and CUDA graphs. `DeviceBuffer` and `Stream` wrap the few calls used.
"""
from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass

from .errors import BackendUnavailableError

INSTALL_HINT = "pip install 'dcae-deploy[tensorrt]'"
# CUdevice_attribute values (cuda.h): stable since CUDA 6.
_CC_MAJOR, _CC_MINOR = 75, 76


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "9.0"
    driver_cuda_version: str  # the CUDA version the driver supports, "12.4"


def _libcuda():
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise BackendUnavailableError("no CUDA GPU visible (no NVIDIA driver: libcuda not found)")


def probe_gpu(device: int = 0) -> GpuInfo:
    """The device's name and compute capability; `BackendUnavailableError`
    saying what is missing when there is none."""
    lib = _libcuda()
    status = lib.cuInit(0)
    if status == 100:  # CUDA_ERROR_NO_DEVICE (also what CUDA_VISIBLE_DEVICES="" gives)
        raise BackendUnavailableError("no CUDA GPU visible (the driver reports no device; "
                                      "check CUDA_VISIBLE_DEVICES)")
    if status != 0:
        raise BackendUnavailableError(f"no CUDA GPU visible (cuInit failed with CUDA error {status})")
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value <= device:
        raise BackendUnavailableError(f"no CUDA GPU visible (device {device} of {count.value})")
    handle = ctypes.c_int(0)
    lib.cuDeviceGet(ctypes.byref(handle), device)
    name = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(name, 256, handle)
    major, minor, version = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, handle)
    lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, handle)
    lib.cuDriverGetVersion(ctypes.byref(version))
    return GpuInfo(name.value.decode(errors="replace").strip(), f"{major.value}.{minor.value}",
                   _cuda_version_string(version.value))


def gpu_unavailable_reason() -> str | None:
    try:
        probe_gpu()
    except BackendUnavailableError as exc:
        return str(exc)
    return None


def _cuda_version_string(version: int) -> str:
    # CUDA encodes 12.4 as 12040.
    return f"{version // 1000}.{(version % 1000) // 10}"


# ---- cuda-python ------------------------------------------------------------------

def cudart():
    """cuda-python's runtime API module, or `BackendUnavailableError`."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python < 12.6
        except ImportError:
            raise BackendUnavailableError(
                f"cuda-python not installed ({INSTALL_HINT})") from None
    return runtime


def cuda_runtime_version() -> str | None:
    try:
        rt = cudart()
    except BackendUnavailableError:
        return None
    err, version = rt.cudaRuntimeGetVersion()
    return _cuda_version_string(version) if int(err) == 0 else None


def check(result, what: str):
    """Unpack a cuda-python call's (error, value...) tuple; raise on error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        rt = cudart()
        _, name = rt.cudaGetErrorName(err)
        name = name.decode() if isinstance(name, bytes) else str(name)
        raise RuntimeError(f"CUDA error {name} in {what}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class Stream:
    """One CUDA stream; `handle` is the integer TensorRT's execute_async_v3 takes."""

    def __init__(self):
        self._rt = cudart()
        self.stream = check(self._rt.cudaStreamCreate(), "cudaStreamCreate")
        self.handle = int(self.stream)

    def synchronize(self) -> None:
        check(self._rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.stream is not None:
            self._rt.cudaStreamDestroy(self.stream)
            self.stream = None


class DeviceBuffer:
    """`nbytes` of device memory; cudaMalloc returns 256-byte aligned
    pointers, which TensorRT requires of tensor addresses."""

    def __init__(self, nbytes: int):
        self._rt = cudart()
        self.nbytes = int(nbytes)
        self.ptr = int(check(self._rt.cudaMalloc(max(self.nbytes, 1)), "cudaMalloc"))

    def upload(self, array, stream: Stream) -> None:
        # From pageable numpy memory the copy is staged by the driver; the
        # caller synchronises the stream before the array may change.
        assert array.nbytes <= self.nbytes and array.flags.c_contiguous
        check(self._rt.cudaMemcpyAsync(self.ptr, array.ctypes.data, array.nbytes,
                                       self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.stream),
              "cudaMemcpyAsync (host to device)")

    def download(self, array, stream: Stream) -> None:
        assert array.nbytes <= self.nbytes and array.flags.c_contiguous
        check(self._rt.cudaMemcpyAsync(array.ctypes.data, self.ptr, array.nbytes,
                                       self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.stream),
              "cudaMemcpyAsync (device to host)")

    def copy_from(self, ptr: int, nbytes: int, stream: Stream) -> None:
        check(self._rt.cudaMemcpyAsync(self.ptr, ptr, nbytes,
                                       self._rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream.stream),
              "cudaMemcpyAsync (device to device)")

    def free(self) -> None:
        if self.ptr:
            self._rt.cudaFree(self.ptr)
            self.ptr = 0

    def __del__(self):
        try:
            self.free()
        except Exception:  # interpreter shutdown: the module may be gone
            pass
