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
fp32 scales stay from a float64 evaluation on the embedded model, a floor for
any model (each model has its own margin, at least twice it: `dcae.margin`): with
it, the backend writes and reads portable files, which any other such setup
decodes, also across CPU families; without it (never measured) it reads none.
"""
from __future__ import annotations

import functools
import importlib
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import BackendUnavailableError, BundleError, DcaeError
from .manifest import IMAGE_TRANSFORMS, GraphSpec


class GraphRunError(DcaeError):
    """A backend failed to run a graph on inputs the runtime checked: the
    bundle's graph does not do what its manifest says."""


def _one_line(text: str) -> str:
    # onnxruntime's messages run over several lines; ours must be one.
    return " ".join(str(text).split())


def check_tensor_names(graph: GraphSpec, path: Path, actual_in: list, actual_out: list) -> None:
    """A loaded graph's tensor names must be the manifest's: the codec feeds by name."""
    wanted_in = [t.name for t in graph.inputs]
    wanted_out = [t.name for t in graph.outputs]
    if sorted(actual_in) != sorted(wanted_in) or sorted(actual_out) != sorted(wanted_out):
        raise BundleError(
            f"bundle graph {path.name} has inputs {actual_in} and outputs {actual_out}, "
            f"the manifest says {wanted_in} and {wanted_out}")


class GraphSession(ABC):
    """One loaded graph. `run` takes and returns {tensor name: array}."""

    def __init__(self, spec: GraphSpec, timings: list):
        self.spec = spec
        self.name = spec.name
        self.input_names = [t.name for t in spec.inputs]
        self.output_names = [t.name for t in spec.outputs]
        self._input_dtypes = {t.name: np.dtype(t.dtype) for t in spec.inputs}
        self._timings = timings
        self._release_requested = False  # set by `run` for the call in progress

    def run(self, inputs: dict, release_memory: bool = False) -> dict:
        """`release_memory`: give the memory the run used back to the system
        once it is done (where the backend can: onnxruntime's arena), rather
        than keep it for the next run (the last tile of an image, or a graph
        run once on the whole latent)."""
        if set(inputs) != set(self.input_names):
            # The codec always passes the contract's names: this is a bug, not bad data.
            raise ValueError(f"graph {self.name} takes inputs {self.input_names}, got {sorted(inputs)}")
        feed = {}
        for name, value in inputs.items():
            dtype = self._input_dtypes[name]
            # A C-contiguous array of the declared dtype passes through uncopied.
            feed[name] = np.ascontiguousarray(value, dtype=dtype)
        start = time.perf_counter()
        self._release_requested = release_memory
        try:
            outputs = self._run(feed)
        finally:
            self._release_requested = False
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
    # graphs give on the embedded model (a measured floor; other models stray
    # farther): it reads portable files whose margin is at least twice this.
    # None: not measured, so no portable files.
    sigma_error_bound: float | None = None

    def __init__(self) -> None:
        self.timings: list[tuple[str, float]] = []

    @abstractmethod
    def load(self, graph: GraphSpec, path: str | Path) -> GraphSession:
        """Load the graph file at `path` described by `graph`."""

    def bundle_warning(self, manifest) -> str | None:
        """Why this backend would run `manifest`'s bundle worse than it was
        measured at export (a warning for the user), or None."""
        return None

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
SPINNING_GRAPHS = IMAGE_TRANSFORMS


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


def _arena_release_options(ort):
    """Run options that free the arena's unused chunks once the run is done
    (onnxruntime's `memory.enable_memory_arena_shrinkage`)."""
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def _output_dims_from_inputs(spec: GraphSpec) -> tuple[list, dict] | None:
    """(each output's dims, {symbolic dim: (input name, axis)}) where every
    symbolic dimension of a float32 output is one of an input's (the slice
    graphs): the outputs' shapes follow from the inputs'; None otherwise."""
    where = {}
    for tensor in spec.inputs:
        for axis, dim in enumerate(tensor.shape):
            if isinstance(dim, str):
                where.setdefault(dim, (tensor.name, axis))
    dims = [list(tensor.shape) for tensor in spec.outputs]
    known = all(isinstance(d, int) or d in where for shape in dims for d in shape)
    return (dims, where) if known and all(t.dtype == "float32" for t in spec.outputs) else None


class OrtSession(GraphSession):
    """`release_after_run`: shrink the (shared) CPU arena after every run of
    this graph, not only when `run(..., release_memory=True)` asks.

    The arena otherwise keeps the largest footprint any graph ever reached:
    after a tiled g_a the slice loop would run on top of g_a's tile
    (embedded model, 12 MP under a 2G budget: 1.8 GB held), and the entropy
    graphs, which run on the whole latent, leave theirs under g_s. Released,
    each graph's peak is its own (their fresh pages cost little: they run
    once per image, or once per tile plan)."""

    def __init__(self, spec: GraphSpec, timings: list, session, release_after_run: bool = False,
                 release_options=None):
        super().__init__(spec, timings)
        self._session = session
        self._release_after_run = release_after_run
        self._release_options = release_options
        # Outputs are bound to numpy arrays where the arena can be released
        # and the contract gives their shapes from the inputs'.
        self._output_dims = _output_dims_from_inputs(spec) if release_options is not None else None

    def _run(self, feed: dict) -> dict:
        release = self._release_after_run or self._release_requested
        options = self._release_options if release else None
        try:
            if self._output_dims is None:
                arrays = self._session.run(self.output_names, feed, options)
            else:
                arrays = self._run_into_numpy(feed, self._output_shapes(feed), options)
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise GraphRunError(f"graph {self.name} failed in onnxruntime: {_one_line(exc)}") from None
        return dict(zip(self.output_names, arrays))

    def _output_shapes(self, feed: dict) -> list:
        dims, where = self._output_dims
        return [tuple(d if isinstance(d, int) else feed[where[d][0]].shape[where[d][1]] for d in shape)
                for shape in dims]

    def _run_into_numpy(self, feed: dict, shapes: list, options) -> list:
        """Run with the outputs bound to numpy arrays: they never live in the
        arena, so the run's shrinkage gives back all it used (an output
        in the arena keeps its region, and every page touched in it, for as
        long as the array lives)."""
        binding = self._session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, array)
        outputs = []
        for name, shape in zip(self.output_names, shapes):
            array = np.empty(shape, np.float32)
            binding.bind_output(name, "cpu", 0, np.float32, list(shape), array.ctypes.data)
            outputs.append(array)
        self._session.run_with_iobinding(binding, options)
        return outputs


def int8_products_saturate_here() -> bool:
    """Whether onnxruntime's u8 x s8 CPU kernels saturate on 8-bit weights on
    this CPU: on x86 without VNNI or AMX they add each pair of products in int16
    (VPMADDUBSW), and 255 x 127 x 2 > 32767. False where it cannot be told."""
    import platform

    from .cpu import cpu_flags

    if platform.machine().lower() not in ("x86_64", "amd64") or not cpu_flags():
        return False
    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags()


def int8_saturation_warning(manifest, kernels: str, measured: str) -> str | None:
    """The warning for a bundle whose 8-bit int8 weights `kernels` saturate on
    this CPU (`measured`: how much worse its image came out), or None."""
    if not (manifest.int8_weights_saturate_without_vnni and int8_products_saturate_here()):
        return None
    return (f"this int8 bundle has 8-bit weights, which {kernels} int8 kernels saturate on this CPU (no VNNI): "
            f"{measured}; export it again with dcae-export --precision int8 (the onnxruntime form, 7-bit weights)")


class OnnxRuntimeBackend(Backend):
    """onnxruntime on one execution provider.

    Sessions run sequentially with all graph optimisations on; `threads` sets
    the intra-op thread pool (None: onnxruntime's default, one per core).
    """

    name = "onnxruntime"
    numeric_class = "onnxruntime-cpu"
    # Measured at most 3.3e-6 near index boundaries (embedded model at 12,500
    # steps, 24 Kodak images, AVX-512: benchmarks/results/sigma_agreement.md;
    # 2.6e-6 with earlier weights, stated with a margin of 2x; 2.0e-6 with the
    # current weights on an AMD EPYC with AVX2: sigma_agreement_amd.md).
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

    def bundle_warning(self, manifest) -> str | None:
        if self.providers != ("CPUExecutionProvider",):
            return None
        return int8_saturation_warning(manifest, "onnxruntime's",
                                       "expect an image about 0.3 dB worse or more (measured on an AMD EPYC with AVX2)")

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
        if graph_name in IMAGE_TRANSFORMS:
            # A tiled image runs g_a / g_s many times at one shape. From the
            # second run on, a memory pattern makes onnxruntime allocate one
            # planned block for the whole graph besides the arena chunks the
            # first run left: the peak doubles (embedded model, 1152^2 px
            # tiles: 766 -> 1115 MB), and the measured bytes per pixel that
            # size the tiles would no longer hold. Without it every run reuses
            # the first one's chunks (783 MB), at the same speed within noise.
            options.enable_mem_pattern = False
        if _shared_cpu_arena(self._ort):
            options.add_session_config_entry("session.use_env_allocators", "1")
            # Weights in memory of their own: a graph loaded while the arena
            # holds another's freed chunks would otherwise pin that region
            # (and its resident pages) for the life of the process.
            options.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
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
        # Graphs run once on the whole latent (h_a, h_s, the slice graphs)
        # always give their memory back; g_a / g_s when the codec asks (the
        # last tile), so that tiles reuse the first one's chunks.
        return OrtSession(graph, self.timings, session, release_after_run=graph.name not in IMAGE_TRANSFORMS,
                          release_options=(_arena_release_options(self._ort)
                                           if self.providers == ("CPUExecutionProvider",) else None))

    def _check_session(self, session, graph: GraphSpec, path: Path) -> None:
        check_tensor_names(graph, path, [t.name for t in session.get_inputs()],
                           [t.name for t in session.get_outputs()])


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


# ---- OpenVINO -----------------------------------------------------------------------

# OpenVINO compiles a graph for fixed input shapes, one compiled model per
# padded image size. Static shapes are what the C++ host (hosts/cpp) compiles
# too, and they matter for more than speed: the same graph compiled for
# dynamic shapes computes other bits (measured on slice_params_2), so a host
# that shares this backend's numeric class must compile exactly the same way.
# Each compiled model holds its own copy of the weights, so only the most
# recently used sizes are kept.
OPENVINO_COMPILED_SIZES_KEPT = 2


def openvino_numeric_class(version: str) -> str:
    """The numeric class of OpenVINO's CPU plugin at `version` (its build
    string, "2026.4.1-22982-..."): kernels change between releases, so the
    release is part of the class. The entropy graphs always run in f32, so
    the precision asked for g_a, h_a and g_s is not."""
    return f"openvino-cpu:{version.split('-')[0]}"


def openvino_compile_config(inference_precision: str, threads: int | None) -> dict:
    """Properties every graph is compiled with (the C++ host sets the same).

    OpenVINO's CPU plugin defaults to bf16 on CPUs that have it, so the
    precision is always given. One stream and the latency hint: the codec
    runs one graph at a time."""
    config = {"INFERENCE_PRECISION_HINT": inference_precision, "NUM_STREAMS": 1,
              "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


class OpenVinoSession(GraphSession):
    def __init__(self, spec: GraphSpec, timings: list, backend: "OpenVinoBackend", model):
        super().__init__(spec, timings)
        self._backend = backend
        self._model = model
        self._requests: dict[tuple, object] = {}  # input shapes -> infer request, oldest first

    def _request(self, feed: dict):
        key = tuple((name, feed[name].shape) for name in self.input_names)
        request = self._requests.pop(key, None)
        if request is None:
            if len(self._requests) >= OPENVINO_COMPILED_SIZES_KEPT:
                del self._requests[next(iter(self._requests))]
            request = self._backend.compile(self.spec, self._model, dict(key)).create_infer_request()
        self._requests[key] = request  # now the most recently used
        return request

    def _run(self, feed: dict) -> dict:
        try:
            request = self._request(feed)
            # The inputs are bound where they are, as the C++ host does
            # (InferRequest.infer(feed) copies each into a tensor of its own
            # first); `feed` keeps them alive through the call.
            for name, array in feed.items():
                request.set_tensor(name, self._backend.shared_tensor(array))
            request.infer()
        except RuntimeError as exc:
            raise GraphRunError(f"graph {self.name} failed in OpenVINO: {_one_line(exc)}") from None
        # The request reuses its output buffers on the next call: copy.
        return {name: np.array(request.get_tensor(name).data) for name in self.output_names}


class OpenVinoBackend(Backend):
    """OpenVINO's CPU plugin, reading the bundle's ONNX graphs directly.

    All graphs run in f32 unless `precision="bf16"`, which runs g_a, h_a and
    g_s in bf16 (where the CPU has bf16 instructions) and keeps the entropy
    graphs in f32: they decide scale indexes, which the decoder must
    reproduce, so a bf16 encoder's files decode on an f32 decoder and back.
    """

    name = "openvino"
    precisions = ("f32", "bf16")
    # Measured at most 7.7e-6 near index boundaries (embedded model at 12,500
    # steps, 24 Kodak images, AVX-512, f32 entropy graphs: benchmarks/results/
    # sigma_agreement.md; 5.3e-6 with earlier weights, stated with a margin of
    # 2x; 7.8e-6 with the current weights on an AMD EPYC with AVX2:
    # sigma_agreement_amd.md). The C++ host
    # (hosts/cpp) states the same for the same arithmetic.
    sigma_error_bound = 1.1e-5

    def __init__(self, threads: int | None = None, precision: str = "f32"):
        super().__init__()
        if threads is not None and threads < 1:
            raise BackendUnavailableError(f"thread count must be at least 1, got {threads}")
        if precision not in self.precisions:
            raise BackendUnavailableError(f"OpenVINO precision must be one of {self.precisions}, got {precision!r}")
        try:
            import openvino
        except ImportError:
            raise BackendUnavailableError(
                "OpenVINO backend unavailable: it needs the openvino package "
                "(pip install dcae-deploy[openvino])") from None
        self._openvino = openvino
        self._core = openvino.Core()
        if precision == "bf16" and "BF16" not in self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise BackendUnavailableError("OpenVINO bf16 unavailable: this CPU has no bf16 instructions")
        self.threads = threads
        self.precision = precision
        self.numeric_class = openvino_numeric_class(openvino.get_version())
        if precision == "bf16":
            self.name = "openvino-bf16"

    def shared_tensor(self, array: np.ndarray):
        """An OpenVINO tensor over `array`'s memory (C-contiguous, as
        GraphSession.run makes every input)."""
        return self._openvino.Tensor(array, shared_memory=True)

    def bundle_warning(self, manifest) -> str | None:
        # The C++ host (hosts/cpp, openvino_backend.cpp) says the same.
        return int8_saturation_warning(manifest, "OpenVINO's",
                                       "the image comes out far worse (measured 13 dB worse on an AMD EPYC with AVX2)")

    def graph_precision(self, graph: GraphSpec) -> str:
        from .manifest import is_entropy_graph

        return "f32" if is_entropy_graph(graph.name) else self.precision

    def compile(self, graph: GraphSpec, model, shapes: dict):
        """The graph compiled for the CPU at these input shapes."""
        model = model.clone()
        model.reshape({name: list(shape) for name, shape in shapes.items()})
        return self._core.compile_model(
            model, "CPU", openvino_compile_config(self.graph_precision(graph), self.threads))

    def load(self, graph: GraphSpec, path: str | Path) -> GraphSession:
        path = Path(path)
        try:
            model = self._core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise BundleError(f"bundle graph {path.name} cannot be loaded by OpenVINO: {_one_line(exc)}") from None
        check_tensor_names(graph, path, [port.get_any_name() for port in model.inputs],
                           [port.get_any_name() for port in model.outputs])
        return OpenVinoSession(graph, self.timings, self, model)


def _openvino_bf16_backend(threads: int | None = None) -> Backend:
    return OpenVinoBackend(threads=threads, precision="bf16")


# ---- the entropy graphs on one backend, the image transforms on another ----------

class SplitBackend(Backend):
    """The entropy graphs (h_s, slice_*) on one backend, the image transforms
    (g_a, h_a, g_s) on another.

    Only the entropy graphs decide what a decoder must reproduce (scale
    indexes, roundings); the transforms change the latents and the pixels as
    any float rounding does, and the symbols written are whatever they give.
    So a split setup's files, its numeric class and its scale error bound are
    the entropy backend's: an encoder whose g_a runs in OpenVINO bf16 writes
    files that every onnxruntime decoder reads, exact ones included.
    """

    def __init__(self, name: str, entropy: Backend, transforms: Backend):
        super().__init__()
        self.name = name
        self.entropy, self.transforms = entropy, transforms
        # One list: every session appends to it, whichever backend made it.
        entropy.timings = transforms.timings = self.timings
        self.numeric_class = entropy.numeric_class
        self.sigma_error_bound = entropy.sigma_error_bound
        self.threads = getattr(entropy, "threads", None)

    def bundle_warning(self, manifest) -> str | None:
        return self.transforms.bundle_warning(manifest) or self.entropy.bundle_warning(manifest)

    def load(self, graph: GraphSpec, path: str | Path) -> GraphSession:
        from .manifest import is_entropy_graph

        return (self.entropy if is_entropy_graph(graph.name) else self.transforms).load(graph, path)


def _onnxruntime_openvino_bf16_backend(threads: int | None = None) -> Backend:
    return SplitBackend("onnxruntime+openvino-bf16", OnnxRuntimeBackend(threads=threads),
                        OpenVinoBackend(threads=threads, precision="bf16"))


# ---- registry ----------------------------------------------------------------------

# A backend in a module of its own (optional libraries behind it) is listed
# here by that module's name: `get_backend` imports the module on first use,
# and the module registers its backends (`register_backend`) as it is
# imported. So this module never imports them (they import it, one way), and
# `backend_names()` lists them without loading tensorrt or cuda-python.
TENSORRT_MODULE = "dcae_deploy.runtime.tensorrt_backend"

_REGISTRY: dict[str, Callable[..., Backend] | str] = {
    "onnxruntime": OnnxRuntimeBackend,
    "onnxruntime-cpu": OnnxRuntimeBackend,
    "onnxruntime-cuda": OnnxRuntimeCudaBackend,
    "onnxruntime-trt": TENSORRT_MODULE,
    "tensorrt": TENSORRT_MODULE,
    "openvino": OpenVinoBackend,
    "openvino-bf16": _openvino_bf16_backend,
    "onnxruntime+openvino-bf16": _onnxruntime_openvino_bf16_backend,
}


# Backends that run the image transforms (g_a, h_a, g_s) of a float bundle in
# bf16: the bench measures their speed against the bf16 peak.
BF16_TRANSFORM_BACKENDS = frozenset({"openvino-bf16", "onnxruntime+openvino-bf16"})


def register_backend(name: str, factory: Callable[..., Backend] | str) -> None:
    """Make `get_backend(name, threads)` call `factory(threads=threads)`; a
    string names the module that registers the factory when imported."""
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
    if isinstance(factory, str):
        # Importing the module registers its backends; it imports no optional
        # library itself (its backends say which is missing when constructed).
        importlib.import_module(factory)
        factory = _REGISTRY[name]
        if isinstance(factory, str):
            raise RuntimeError(f"module {factory} registers no backend {name!r}")
    return factory(threads=threads)
