"""Backends: what runs a bundle's graphs, behind one small interface.

Modelled on Polygraphy's runners: a `Backend` loads a graph into a
`GraphSession`; a session maps named numpy inputs to named numpy outputs and
records how long each call took. The codec, the benchmarks and the comparison
tools only ever see this interface, so a comparison is a loop over backends.

    backend = get_backend("onnxruntime", threads=2)
    session = backend.load(manifest.graphs["g_a"], bundle_dir / "g_a.onnx")
    y = session.run({"x": x})["y"]
    backend.timings  # [("g_a", 0.0123), ...]

Dtypes: a session casts each input to the dtype the manifest declares for it
(an fp16 graph takes float16) and returns every output as float32 (the
upcast from float16 is exact), so callers work in float32 whatever the
graph's precision.

`numeric_class` names the arithmetic a backend does. It goes into the
fingerprint of files written for one setup only (reduced-precision entropy
graphs, `--not-portable`). `sigma_error_bound` states how far the backend's
fp32 scales stay from a float64 evaluation: with it, the backend writes and
reads portable files (`runtime.portable`), which any other such setup decodes,
also across CPU families; without it (never measured) it reads none.
"""
from __future__ import annotations

import functools
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import BackendUnavailableError, BundleError, DcaeError
from .manifest import GraphSpec


class GraphRunError(DcaeError):
    """A backend failed to run a graph on inputs the runtime checked: the
    bundle's graph does not do what its manifest says."""


def _one_line(text: str) -> str:
    # onnxruntime's messages run over several lines; ours must be one.
    return " ".join(str(text).split())


class GraphSession(ABC):
    """One loaded graph. `run` takes and returns {tensor name: array}."""

    def __init__(self, spec: GraphSpec, timings: list):
        self.spec = spec
        self.name = spec.name
        self.input_names = [t.name for t in spec.inputs]
        self.output_names = [t.name for t in spec.outputs]
        self._input_dtypes = {t.name: np.dtype(t.dtype) for t in spec.inputs}
        self._timings = timings

    def run(self, inputs: dict) -> dict:
        if set(inputs) != set(self.input_names):
            # The codec always passes the contract's names: this is a bug, not bad data.
            raise ValueError(f"graph {self.name} takes inputs {self.input_names}, got {sorted(inputs)}")
        feed = {}
        for name, value in inputs.items():
            dtype = self._input_dtypes[name]
            # A C-contiguous array of the declared dtype passes through uncopied.
            feed[name] = np.ascontiguousarray(value, dtype=dtype)
        start = time.perf_counter()
        outputs = self._run(feed)
        self._timings.append((self.name, time.perf_counter() - start))
        return {name: np.asarray(array, dtype=np.float32) for name, array in outputs.items()}

    @abstractmethod
    def _run(self, feed: dict) -> dict:
        """Run the graph on checked, cast inputs; return {output name: array}."""


class Backend(ABC):
    """Loads graphs; records the time of every `run` of the sessions it made."""

    name: str = ""
    numeric_class: str = ""
    # The largest |ln sigma - ln sigma_float64| this backend's fp32 entropy
    # graphs give (a measured bound): it reads portable files whose margin is
    # at least twice this. None: not measured, so no portable files.
    sigma_error_bound: float | None = None

    def __init__(self) -> None:
        self.timings: list[tuple[str, float]] = []

    @abstractmethod
    def load(self, graph: GraphSpec, path: str | Path) -> GraphSession:
        """Load the graph file at `path` described by `graph`."""

    def clear_timings(self) -> None:
        self.timings.clear()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} ({self.numeric_class})>"


# ---- onnxruntime --------------------------------------------------------------

# Each onnxruntime session has its own intra-op thread pool, whose workers
# spin for a while after every graph. The codec runs a dozen short graphs back
# to back, so a pool left spinning takes a core from the next graph (on 2
# cores: h_s 24 -> 47 ms, each slice_lrp 25 -> 40 ms at 768x512). Only the
# two long image transforms keep spinning, which helps their many small ops.
SPINNING_GRAPHS = ("g_a", "g_s")


@functools.cache
def _shared_cpu_arena(ort) -> bool:
    """One CPU memory arena for all sessions of the process (registered once).

    With an arena per session, each keeps the peak of its own graph, and the
    runtime's peak RSS is their sum (4.7 GB for the official model at 768x512
    against 2.5 GB for PyTorch); shared, it is the largest graph's (2.4 GB) at
    the same speed. Without arenas at all memory is lower still but g_a and
    g_s slow down by ~20 % (fresh pages on every call). (Two threads racing
    here may both register: onnxruntime accepts the second registration.)"""
    try:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
    except Exception:  # an onnxruntime build without shared allocators: one arena per session
        return False
    return True


class OrtSession(GraphSession):
    def __init__(self, spec: GraphSpec, timings: list, session):
        super().__init__(spec, timings)
        self._session = session

    def _run(self, feed: dict) -> dict:
        try:
            arrays = self._session.run(self.output_names, feed)
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise GraphRunError(f"graph {self.name} failed in onnxruntime: {_one_line(exc)}") from None
        return dict(zip(self.output_names, arrays))


class OnnxRuntimeBackend(Backend):
    """onnxruntime on one execution provider.

    Sessions run sequentially with all graph optimisations on; `threads` sets
    the intra-op thread pool (None: onnxruntime's default, one per core).
    """

    name = "onnxruntime"
    numeric_class = "onnxruntime-cpu"
    # Measured at most 2.6e-6 near index boundaries (embedded model, 24 Kodak
    # images, AVX-512: benchmarks/results/sigma_agreement.md); stated with a
    # margin of 2x.
    sigma_error_bound = 6e-6
    providers: tuple = ("CPUExecutionProvider",)

    def __init__(self, threads: int | None = None):
        super().__init__()
        if threads is not None and threads < 1:
            raise BackendUnavailableError(f"thread count must be at least 1, got {threads}")
        self.threads = threads
        import onnxruntime

        self._ort = onnxruntime
        self._check_providers()

    def _check_providers(self) -> None:
        available = self._ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:  # pragma: no cover - the CPU provider is always built in
            raise BackendUnavailableError(f"onnxruntime has no {', '.join(missing)} on this machine")

    def _session_options(self, graph_name: str = ""):
        options = self._ort.SessionOptions()
        options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
        # Graphs are run one after another, never side by side.
        options.inter_op_num_threads = 1
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        if graph_name not in SPINNING_GRAPHS:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if _shared_cpu_arena(self._ort):
            options.add_session_config_entry("session.use_env_allocators", "1")
        options.log_severity_level = 3  # errors only: no warnings on the user's terminal
        return options

    def load(self, graph: GraphSpec, path: str | Path) -> GraphSession:
        path = Path(path)
        try:
            session = self._ort.InferenceSession(
                str(path), sess_options=self._session_options(graph.name), providers=list(self.providers))
        except Exception as exc:
            raise BundleError(
                f"bundle graph {path.name} cannot be loaded by onnxruntime: {_one_line(exc)}") from None
        self._check_session(session, graph, path)
        return OrtSession(graph, self.timings, session)

    def _check_session(self, session, graph: GraphSpec, path: Path) -> None:
        """The graph's tensor names must be the manifest's: the codec feeds by name."""
        actual_in = [t.name for t in session.get_inputs()]
        actual_out = [t.name for t in session.get_outputs()]
        wanted_in = [t.name for t in graph.inputs]
        wanted_out = [t.name for t in graph.outputs]
        if sorted(actual_in) != sorted(wanted_in) or sorted(actual_out) != sorted(wanted_out):
            raise BundleError(
                f"bundle graph {path.name} has inputs {actual_in} and outputs {actual_out}, "
                f"the manifest says {wanted_in} and {wanted_out}")


class OnnxRuntimeCudaBackend(OnnxRuntimeBackend):
    """onnxruntime's CUDA execution provider (the `onnxruntime-gpu` wheel)."""

    name = "onnxruntime-cuda"
    numeric_class = "onnxruntime-cuda"
    sigma_error_bound = None  # never measured: no onnxruntime-gpu here
    providers = ("CUDAExecutionProvider",)

    def _check_providers(self) -> None:
        if "CUDAExecutionProvider" not in self._ort.get_available_providers():
            raise BackendUnavailableError(
                "onnxruntime CUDA backend unavailable: it needs the onnxruntime-gpu package "
                "(pip install dcae-deploy[gpu]) and a CUDA GPU")

    def _check_session(self, session, graph: GraphSpec, path: Path) -> None:
        # onnxruntime silently falls back to the CPU when the CUDA libraries
        # fail to load; that would run under the wrong numeric class.
        if "CUDAExecutionProvider" not in session.get_providers():
            raise BackendUnavailableError(
                "onnxruntime CUDA backend unavailable: the CUDA provider did not load "
                "(needs onnxruntime-gpu with matching CUDA/cuDNN libraries and a CUDA GPU)")
        super()._check_session(session, graph, path)


# ---- TensorRT (runtime/tensorrt_backend.py) ---------------------------------------

def _tensorrt_backend(threads: int | None = None) -> Backend:
    # Imported on use: tensorrt and cuda-python are optional, and the module
    # says which is missing when constructed.
    from .tensorrt_backend import TensorRTBackend

    return TensorRTBackend(threads=threads)


def _onnxruntime_trt_backend(threads: int | None = None) -> Backend:
    from .tensorrt_backend import OnnxRuntimeTensorRTBackend

    return OnnxRuntimeTensorRTBackend(threads=threads)


# ---- registry ----------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., Backend]] = {
    "onnxruntime": OnnxRuntimeBackend,
    "onnxruntime-cpu": OnnxRuntimeBackend,
    "onnxruntime-cuda": OnnxRuntimeCudaBackend,
    "onnxruntime-trt": _onnxruntime_trt_backend,
    "tensorrt": _tensorrt_backend,
}


def register_backend(name: str, factory: Callable[..., Backend]) -> None:
    """Make `get_backend(name, threads)` call `factory(threads=threads)`."""
    _REGISTRY[name] = factory


def backend_names() -> list[str]:
    return list(_REGISTRY)


def get_backend(name: str, threads: int | None = None) -> Backend:
    """A new backend by registry name; `BackendUnavailableError` with the reason
    when it is unknown or cannot run on this machine."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise BackendUnavailableError(
            f"unknown backend {name!r}; known: {', '.join(_REGISTRY)}") from None
    return factory(threads=threads)
