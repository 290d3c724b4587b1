"""The C++ host (hosts/cpp) as a dcae-bench setup: `cpp-openvino`.

`CppHostCoder` loads build/cpp/libdcae-host.so (the C interface of the
dcae::Codec library, include/dcae/c_api.h) with ctypes and codes in this
process, so its times, stages and peak memory are measured exactly as the
Python runtime's setups are: the same warm-up, the same timers, a decode-only
process of its own. Build the host first (README, "C++ host").
"""
from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path

import numpy as np

from dcae_deploy import IMPORT_ROOT
from dcae_deploy.runtime import errors

from .setup_types import Decoded, Encoded

# dcae-bench backend name -> the host's backend
CPP_BACKENDS = {"cpp-openvino": "openvino"}
_REPO = IMPORT_ROOT  # in a checkout, the C++ host is built into its build/cpp
_ERRORS = {"bad_input": errors.BadInputError, "corrupt_stream": errors.CorruptStreamError,
           "desync": errors.DesyncError, "fingerprint": errors.FingerprintMismatchError,
           "bundle": errors.BundleError, "backend": errors.BackendUnavailableError, "io": errors.DcaeError}
_u8p, _i32p = ctypes.POINTER(ctypes.c_uint8), ctypes.POINTER(ctypes.c_int32)


def library_path() -> Path:
    return _REPO / os.environ.get("DCAE_CPP_BUILD", "build/cpp") / "libdcae-host.so"


def _load_library() -> ctypes.CDLL:
    path = library_path()
    if not path.is_file():
        raise errors.BackendUnavailableError(
            f"the C++ host is not built ({path} is missing): in a checkout, cmake -S hosts/cpp -B build/cpp && "
            f"cmake --build build/cpp; elsewhere, set DCAE_CPP_BUILD to the folder that holds libdcae-host.so")
    lib = ctypes.CDLL(str(path))
    lib.dcae_open.restype = ctypes.c_void_p
    lib.dcae_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    lib.dcae_close.argtypes = [ctypes.c_void_p]
    lib.dcae_encode.argtypes = [ctypes.c_void_p, _u8p, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(_u8p),
                                ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(_i32p), ctypes.POINTER(_i32p),
                                ctypes.POINTER(ctypes.c_size_t)]
    lib.dcae_encode_rate.argtypes = [ctypes.c_void_p, _u8p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_double,
                                     ctypes.c_uint64, ctypes.c_double, ctypes.POINTER(ctypes.c_uint16),
                                     ctypes.POINTER(_u8p), ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(_i32p),
                                     ctypes.POINTER(_i32p), ctypes.POINTER(ctypes.c_size_t)]
    lib.dcae_decode.argtypes = [ctypes.c_void_p, _u8p, ctypes.c_size_t, ctypes.c_int, ctypes.POINTER(_u8p),
                                ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32),
                                ctypes.POINTER(_i32p), ctypes.POINTER(ctypes.c_size_t)]
    lib.dcae_read_symbols.argtypes = [ctypes.c_void_p, _u8p, ctypes.c_size_t, ctypes.c_int,
                                      ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32),
                                      ctypes.POINTER(_i32p), ctypes.POINTER(ctypes.c_size_t)]
    for name in ("dcae_error", "dcae_error_kind", "dcae_timings_json", "dcae_warnings", "dcae_numeric_class"):
        getattr(lib, name).restype = ctypes.c_char_p
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    lib.dcae_free.argtypes = [ctypes.c_void_p]
    return lib


class CppHostCoder:
    """A bundle on the C++ host, with the interface of setups.RuntimeCoder."""

    def __init__(self, setup, threads: int | None):
        from dcae_deploy.runtime.manifest import Manifest

        self._lib = _load_library()
        error = ctypes.create_string_buffer(1024)
        handle = self._lib.dcae_open(str(setup.bundle_path).encode(), CPP_BACKENDS[setup.backend].encode(),
                                     threads or 0, error, len(error))
        if not handle:
            raise errors.BundleError(error.value.decode())
        self._handle = handle
        self.numeric_class = "cpp-" + self._lib.dcae_numeric_class(handle).decode()
        manifest = Manifest.read(setup.bundle_path)
        self.num_slices = manifest.num_slices
        self._latent_channels = int(manifest.model["config"]["M"])
        self.timings: dict = {}

    def __del__(self):
        if getattr(self, "_handle", None):
            self._lib.dcae_close(self._handle)

    def _check(self, status: int) -> None:
        self.timings = {k: v / 1e3 for k, v in json.loads(self._lib.dcae_timings_json(self._handle)).items()}
        if status:
            kind = self._lib.dcae_error_kind(self._handle).decode()
            raise _ERRORS.get(kind, errors.DcaeError)(self._lib.dcae_error(self._handle).decode())

    def _take(self, pointer, count: int, dtype) -> np.ndarray:
        array = np.ctypeslib.as_array(pointer, shape=(count,)).astype(dtype, copy=True)
        self._lib.dcae_free(pointer)
        return array

    def _latent_shape(self, height: int, width: int) -> tuple:
        from dcae_deploy.runtime.geometry import padded_size

        ph, pw = padded_size(height, width)
        return (1, self._latent_channels, ph // 16, pw // 16)

    codes_qualities = True

    def encode(self, pixels, quality: float | None = None) -> Encoded:
        from dcae_deploy.runtime.quality import DEFAULT_QUALITY, check_quality

        quality = DEFAULT_QUALITY if quality is None else check_quality(quality)
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        height, width = pixels.shape[:2]
        file, size, symbols, indexes, count = _u8p(), ctypes.c_size_t(), _i32p(), _i32p(), ctypes.c_size_t()
        gain_code = ctypes.c_uint16()
        self._check(self._lib.dcae_encode_rate(self._handle, pixels.ctypes.data_as(_u8p), height, width, quality, 0,
                                               0.0, ctypes.byref(gain_code), ctypes.byref(file), ctypes.byref(size),
                                               ctypes.byref(symbols), ctypes.byref(indexes), ctypes.byref(count)))
        data = self._take(file, size.value, np.uint8).tobytes()
        shape = self._latent_shape(height, width)
        return Encoded(data, ".dcae", height, width, self._take(indexes, count.value, np.int32).reshape(shape),
                       self._take(symbols, count.value, np.int32).reshape(shape))

    def decode(self, data: bytes, force: bool = False, synthesize: bool = True) -> Decoded:
        buffer = np.frombuffer(data, np.uint8)
        file = buffer.ctypes.data_as(_u8p)
        rgb, height, width, symbols, count = _u8p(), ctypes.c_uint32(), ctypes.c_uint32(), _i32p(), ctypes.c_size_t()
        if synthesize:
            self._check(self._lib.dcae_decode(self._handle, file, buffer.size, int(force), ctypes.byref(rgb),
                                              ctypes.byref(height), ctypes.byref(width), ctypes.byref(symbols),
                                              ctypes.byref(count)))
        else:
            self._check(self._lib.dcae_read_symbols(self._handle, file, buffer.size, int(force), ctypes.byref(height),
                                                    ctypes.byref(width), ctypes.byref(symbols), ctypes.byref(count)))
        h, w = height.value, width.value
        pixels = self._take(rgb, h * w * 3, np.uint8).reshape(h, w, 3) if synthesize else None
        warnings = [w for w in self._lib.dcae_warnings(self._handle).decode().split("\n") if w]
        return Decoded(pixels, self._take(symbols, count.value, np.int32).reshape(self._latent_shape(h, w)), warnings)

    def decompress(self, data: bytes) -> np.ndarray:
        return self.decode(data).x
