"""TensorRT backends: the bundle's prebuilt plans ("tensorrt"), and
onnxruntime's TensorRT execution provider ("onnxruntime-trt").

    backend = get_backend("tensorrt")          # BackendUnavailableError if no TensorRT / GPU
    session = backend.load(spec, bundle_dir / "g_a.onnx")   # runs engines/g_a.plan
    y = session.run({"x": x})["y"]

Plans come from `dcae-export build-engines` (dcae_deploy/export/tensorrt_build.py) and
are described by the manifest's `engines` (dcae_deploy/runtime/manifest.py). A plan runs
only where it was built: `load` refuses, with a one-line `BundleError`, plans
built on another GPU model or TensorRT version, plans built from another
version of the graph, and altered plan files.

Memory and copies. Each engine is deserialised once, with one execution
context. Device buffers are allocated once per set of input shapes (that is,
per image size; the last few sizes are kept) and bound with
`set_tensor_address`; a run uploads the inputs, calls `execute_async_v3` on
the backend's stream, downloads the outputs and synchronises once.
Through the common `GraphSession.run` every output comes back to the host,
because that is what the codec's slice loop works with: it needs mu and
scale on the host for the scale indexes and the rANS coder, and it writes
y_hat into a host array. `TensorRTSession.run_device` is the device path a
codec may use instead: inputs may be `DeviceTensor`s (copied on the GPU, no
host round trip) and outputs named in `keep` stay on the GPU as
`DeviceTensor`s; so `support` can go from slice_params_i to slice_lrp_i
without leaving the GPU. The codec does not use it yet (see its `_run`).

CUDA graphs (`TensorRTBackend(cuda_graphs=True)`): after the first run at a
given shape, the engine's launch is captured once and replayed with
`cudaGraphLaunch`, saving the per-layer launch overhead of small graphs
(slice_lrp_i at small sizes). Copies are not captured (they come from
pageable numpy memory). A capture that fails turns graphs off for that
session.

Nothing here imports tensorrt or cuda-python until a backend is constructed.
"""
from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np

from .backends import (Backend, GraphRunError, GraphSession, OnnxRuntimeBackend, OrtSession, _one_line,
                       register_backend)
from .errors import BackendUnavailableError, BadInputError, BundleError
from .gpu import INSTALL_HINT, DeviceBuffer, Stream, check, cuda_runtime_version, cudart, gpu_unavailable_reason, probe_gpu
from .manifest import ENGINES_DIR, GraphSpec, Manifest

TENSORRT_MISSING = f"TensorRT Python package not installed ({INSTALL_HINT})"
# Image sizes whose buffers a session keeps (each size holds one set).
_KEPT_SHAPES = 3


def import_tensorrt():
    """The `tensorrt` module, or `BackendUnavailableError` saying what is missing."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailableError(TENSORRT_MISSING) from None
    except OSError as exc:  # the wheel is there but libnvinfer is not loadable
        raise BackendUnavailableError(f"TensorRT Python package cannot load its libraries ({exc})") from None
    return tensorrt


def tensorrt_unavailable_reason(need_cuda_python: bool = True) -> str | None:
    """None when TensorRT can run here; otherwise every missing piece, in one
    line. Building engines needs TensorRT and a GPU; running them through this
    backend needs cuda-python too."""
    missing = []
    try:
        import_tensorrt()
    except BackendUnavailableError as exc:
        missing.append(str(exc))
    if need_cuda_python:
        try:
            cudart()
        except BackendUnavailableError as exc:
            missing.append(str(exc))
    gpu = gpu_unavailable_reason()
    if gpu:
        missing.append(gpu)
    return "; ".join(missing) or None


def current_platform(trt) -> dict:
    """What the manifest's `engines` records about the build host."""
    gpu = probe_gpu()
    return {"tensorrt_version": trt.__version__, "gpu_name": gpu.name,
            "compute_capability": gpu.compute_capability, "cuda_driver_version": gpu.driver_cuda_version,
            "cuda_runtime_version": cuda_runtime_version()}


REBUILD_HINT = "rebuild them on this host with `dcae-export build-engines BUNDLE`"


def check_engine_platform(engines: dict, current: dict) -> None:
    """Refuse a bundle's plans unless built on this GPU model with this
    TensorRT version (a plan is valid nowhere else). One-line BundleError."""
    if not engines or not engines.get("graphs"):
        raise BundleError("bundle has no TensorRT engines: build them with `dcae-export build-engines BUNDLE`")
    differences = []
    for key, label in (("gpu_name", "GPU"), ("tensorrt_version", "TensorRT")):
        if engines.get(key) != current.get(key):
            differences.append(f"{label} {engines.get(key)!r}, this host has {current.get(key)!r}")
    if differences:
        raise BundleError(f"bundle TensorRT engines were built for {'; '.join(differences)}: {REBUILD_HINT}")


def engine_path(bundle_dir: Path, file) -> Path:
    # The manifest names a file inside engines/; never follow it elsewhere.
    parts = PurePath(file).parts if isinstance(file, str) else ()
    if len(parts) != 1 or parts[0] in (".", ".."):
        raise BundleError(f"manifest names engine file {file!r}, not a file in {ENGINES_DIR}/")
    return bundle_dir / ENGINES_DIR / file


# ---- device tensors ------------------------------------------------------------------

@dataclass
class DeviceTensor:
    """A graph output left on the GPU by `run_device`; valid until the next
    run of the session that made it."""

    ptr: int
    shape: tuple
    dtype: np.dtype
    session: "TensorRTSession"

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def numpy(self) -> np.ndarray:
        host = np.empty(self.shape, self.dtype)
        stream = self.session.backend.stream
        check(cudart().cudaMemcpyAsync(host.ctypes.data, self.ptr, host.nbytes,
                                       cudart().cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.stream),
              "cudaMemcpyAsync (device to host)")
        stream.synchronize()
        return host


@dataclass
class _ShapeSet:
    """Buffers and bindings of one set of input shapes."""

    shapes: dict  # tensor name -> shape, inputs and outputs
    buffers: dict  # tensor name -> DeviceBuffer
    graph_exec: object = None  # CUDA graph of the engine launch, when captured


# ---- the session -------------------------------------------------------------------

class TensorRTSession(GraphSession):
    def __init__(self, spec: GraphSpec, backend: "TensorRTBackend", engine, plan_name: str):
        super().__init__(spec, backend.timings)
        trt = backend.trt
        self.backend = backend
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BundleError(f"bundle engine {plan_name}: TensorRT cannot create an execution context "
                              f"(out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if sorted(inputs) != sorted(self.input_names) or sorted(outputs) != sorted(self.output_names):
            raise BundleError(f"bundle engine {plan_name} has inputs {inputs} and outputs {outputs}, "
                              f"the manifest says {self.input_names} and {self.output_names}")
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        for tensor in spec.inputs + spec.outputs:
            if self._dtypes[tensor.name] != np.dtype(tensor.dtype):
                raise BundleError(f"bundle engine {plan_name}: tensor {tensor.name} is "
                                  f"{self._dtypes[tensor.name]}, the manifest says {tensor.dtype}")
        # (min, opt, max) of profile 0, the only one the builder makes.
        self._profile = {n: tuple(tuple(s) for s in engine.get_tensor_profile_shape(n, 0)) for n in inputs}
        self._sets: OrderedDict[tuple, _ShapeSet] = OrderedDict()
        self._bound: tuple | None = None  # the shape set the context is bound to
        self._graphs_ok = backend.cuda_graphs

    # -- shapes and buffers

    def _shape_set(self, shapes: dict) -> tuple[_ShapeSet, bool]:
        """The buffers for these input shapes, bound to the context; and
        whether the binding changed (then the next launch must be a plain
        enqueue: TensorRT redoes its shape-dependent setup there)."""
        key = tuple(shapes[n] for n in self.input_names)
        found = self._sets.get(key)
        if found is not None:
            self._sets.move_to_end(key)
        else:
            for name, shape in shapes.items():
                low, _, high = self._profile[name]
                if len(shape) != len(low) or any(s < a or s > b for s, a, b in zip(shape, low, high)):
                    raise BadInputError(
                        f"graph {self.name}: input {name} of shape {list(shape)} is outside the TensorRT "
                        f"engine's profile ({list(low)} to {list(high)}); rebuild the engines with "
                        f"`dcae-export build-engines --min-size/--max-size`")
            self._bind_shapes(shapes)
            all_shapes = dict(shapes)
            for name in self.output_names:
                all_shapes[name] = tuple(self.context.get_tensor_shape(name))
            buffers = {n: DeviceBuffer(int(np.prod(s)) * self._dtypes[n].itemsize) for n, s in all_shapes.items()}
            found = _ShapeSet(all_shapes, buffers)
            self._sets[key] = found
            if len(self._sets) > _KEPT_SHAPES:
                _, old = self._sets.popitem(last=False)
                self._free(old)
        if self._bound == key:
            return found, False
        self._bind_shapes(shapes)
        for name, buffer in found.buffers.items():
            if not self.context.set_tensor_address(name, buffer.ptr):
                raise GraphRunError(f"graph {self.name}: TensorRT refused the address of {name}")
        self._bound = key
        return found, True

    def _bind_shapes(self, shapes: dict) -> None:
        self._bound = None
        for name, shape in shapes.items():
            if not self.context.set_input_shape(name, shape):
                raise GraphRunError(f"graph {self.name}: TensorRT refused input shape {list(shape)} for {name}")

    def _free(self, shape_set: _ShapeSet) -> None:
        if shape_set.graph_exec is not None:
            cudart().cudaGraphExecDestroy(shape_set.graph_exec)
        for buffer in shape_set.buffers.values():
            buffer.free()

    # -- running

    def _launch(self, shape_set: _ShapeSet, rebound: bool) -> None:
        rt, stream = cudart(), self.backend.stream
        if shape_set.graph_exec is not None and not rebound:
            check(rt.cudaGraphLaunch(shape_set.graph_exec, stream.stream), "cudaGraphLaunch")
            return
        if not self.context.execute_async_v3(stream.handle):
            raise GraphRunError(f"graph {self.name}: TensorRT execution failed")
        if self._graphs_ok and shape_set.graph_exec is None:
            # Capture after a plain run at this shape: TensorRT does its
            # shape-dependent setup in the first enqueue after new shapes,
            # which must not be captured.
            self._capture(shape_set)

    def _capture(self, shape_set: _ShapeSet) -> None:
        rt, stream = cudart(), self.backend.stream
        try:
            check(rt.cudaStreamBeginCapture(stream.stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
                  "cudaStreamBeginCapture")
            launched = self.context.execute_async_v3(stream.handle)
            graph = check(rt.cudaStreamEndCapture(stream.stream), "cudaStreamEndCapture")
            if not launched:
                raise RuntimeError("enqueue failed during capture")
            shape_set.graph_exec = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
            rt.cudaGraphDestroy(graph)
        except RuntimeError:
            # Some engines cannot be captured; run them without graphs.
            self._graphs_ok = False
            shape_set.graph_exec = None

    def _execute(self, feed: dict, keep=()) -> dict:
        stream = self.backend.stream
        shape_set, rebound = self._shape_set({n: tuple(v.shape) for n, v in feed.items()})
        for name, value in feed.items():
            buffer = shape_set.buffers[name]
            if isinstance(value, DeviceTensor):
                buffer.copy_from(value.ptr, value.nbytes, stream)
            else:
                buffer.upload(value, stream)
        self._launch(shape_set, rebound)
        outputs = {}
        for name in self.output_names:
            shape, dtype = shape_set.shapes[name], self._dtypes[name]
            if name in keep:
                outputs[name] = DeviceTensor(shape_set.buffers[name].ptr, shape, dtype, self)
            else:
                outputs[name] = np.empty(shape, dtype)
                shape_set.buffers[name].download(outputs[name], stream)
        stream.synchronize()
        return outputs

    def _run(self, feed: dict) -> dict:
        return self._execute(feed)

    def run_device(self, inputs: dict, keep=()) -> dict:
        """`run`, with inputs that may be `DeviceTensor`s and the outputs named
        in `keep` left on the GPU. Host outputs are float32, as from `run`."""
        import time

        feed = {}
        for name in self.input_names:
            value = inputs[name]
            if isinstance(value, DeviceTensor):
                if value.dtype != self._dtypes[name]:
                    raise ValueError(f"graph {self.name}: device input {name} is {value.dtype}, "
                                     f"the engine takes {self._dtypes[name]}")
                feed[name] = value
            else:
                feed[name] = np.ascontiguousarray(value, dtype=self._input_dtypes[name])
        start = time.perf_counter()
        outputs = self._execute(feed, keep=set(keep))
        self._timings.append((self.name, time.perf_counter() - start))
        return {n: v if isinstance(v, DeviceTensor) else np.asarray(v, np.float32) for n, v in outputs.items()}

    def close(self) -> None:
        for shape_set in self._sets.values():
            self._free(shape_set)
        self._sets.clear()
        self._bound = None


# ---- the backend ---------------------------------------------------------------------

class TensorRTBackend(Backend):
    """Runs the TensorRT plans in a bundle's engines/ (see the module docstring).

    `threads` is accepted for the registry's sake and ignored (the GPU runs
    the graphs). The numeric class names the GPU model and TensorRT version:
    plans built by one TensorRT for one GPU model compute alike; elsewhere
    they may not, and are refused anyway.
    """

    name = "tensorrt"

    def __init__(self, threads: int | None = None, cuda_graphs: bool = False):
        super().__init__()
        reason = tensorrt_unavailable_reason(need_cuda_python=True)
        if reason:
            raise BackendUnavailableError(f"TensorRT backend unavailable: {reason}")
        self.trt = import_tensorrt()
        self.platform = current_platform(self.trt)
        self.numeric_class = f"tensorrt:{self.platform['gpu_name']}:{self.platform['tensorrt_version']}"
        self.cuda_graphs = cuda_graphs
        self._logger = self.trt.Logger(self.trt.Logger.WARNING)
        self._runtime = self.trt.Runtime(self._logger)
        self.stream = Stream()
        self._engines: dict[Path, dict] = {}  # bundle dir -> its checked `engines`

    def _bundle_engines(self, bundle_dir: Path) -> dict:
        engines = self._engines.get(bundle_dir)
        if engines is None:
            engines = Manifest.read(bundle_dir).engines
            check_engine_platform(engines, self.platform)
            self._engines[bundle_dir] = engines
        return engines

    def load(self, graph: GraphSpec, path: str | Path) -> TensorRTSession:
        """`path` is the graph's .onnx in its bundle, as for every backend;
        the plan is looked up in the same bundle's engines/."""
        bundle_dir = Path(path).resolve().parent
        engines = self._bundle_engines(bundle_dir)
        entry = engines["graphs"].get(graph.name)
        if entry is None:
            raise BundleError(f"bundle has no TensorRT engine for graph {graph.name}: {REBUILD_HINT}")
        plan = engine_path(bundle_dir, entry.get("file"))
        if entry.get("onnx_sha256") != graph.sha256 or entry.get("precision") != graph.precision:
            raise BundleError(f"bundle engine {plan.name} was built from another version of {graph.file}: "
                              f"{REBUILD_HINT}")
        if not plan.is_file():
            raise BundleError(f"bundle engine {plan.name} is missing: {REBUILD_HINT}")
        data = plan.read_bytes()
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise BundleError(f"bundle engine {plan.name} was altered (sha256 mismatch)")
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BundleError(f"bundle engine {plan.name} cannot be deserialised by TensorRT "
                              f"{self.platform['tensorrt_version']}: {REBUILD_HINT}")
        return TensorRTSession(graph, self, engine, plan.name)


# ---- onnxruntime's TensorRT execution provider ------------------------------------------------

class OnnxRuntimeTensorRTBackend(OnnxRuntimeBackend):
    """onnxruntime with its TensorRT execution provider (CUDA for the nodes
    TensorRT does not take). onnxruntime builds and caches the engines itself,
    under the runtime's cache directory, per GPU and graph."""

    name = "onnxruntime-trt"
    numeric_class = "onnxruntime-trt"
    providers = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

    def _check_providers(self) -> None:
        if "TensorrtExecutionProvider" not in self._ort.get_available_providers():
            raise BackendUnavailableError(
                "onnxruntime TensorRT backend unavailable: it needs onnxruntime-gpu with the TensorRT "
                "execution provider (pip install 'dcae-deploy[gpu]'), the TensorRT libraries and a CUDA GPU")

    def _cache_dir(self, graph: GraphSpec) -> Path:
        from .default_bundle import cache_dir

        try:
            gpu = re.sub(r"[^A-Za-z0-9.]+", "-", probe_gpu().name).strip("-")
        except BackendUnavailableError as exc:
            raise BackendUnavailableError(f"onnxruntime TensorRT backend unavailable: {exc}") from None
        path = cache_dir() / "onnxruntime-trt" / gpu / graph.sha256[:16]
        path.mkdir(parents=True, exist_ok=True)
        return path

    def load(self, graph: GraphSpec, path: str | Path) -> GraphSession:
        path = Path(path)
        cache = str(self._cache_dir(graph))
        options = {
            "trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True, "trt_timing_cache_path": cache,
            # The graph's types carry its precision; these let TensorRT use
            # the matching kernels (QDQ graphs: explicit INT8).
            "trt_fp16_enable": graph.precision == "fp16", "trt_int8_enable": graph.precision == "int8",
        }
        try:
            session = self._ort.InferenceSession(
                str(path), sess_options=self._session_options(),
                providers=[("TensorrtExecutionProvider", options), "CUDAExecutionProvider"])
        except Exception as exc:
            raise BundleError(f"bundle graph {path.name} cannot be loaded by onnxruntime-trt: "
                              f"{_one_line(exc)}") from None
        if "TensorrtExecutionProvider" not in session.get_providers():
            raise BackendUnavailableError("onnxruntime TensorRT backend unavailable: the TensorRT provider "
                                          "did not load (TensorRT libraries missing or mismatched)")
        self._check_session(session, graph, path)
        return OrtSession(graph, self.timings, session)


# `backends.get_backend` imports this module by name on first use of these.
register_backend("tensorrt", TensorRTBackend)
register_backend("onnxruntime-trt", OnnxRuntimeTensorRTBackend)
