"""A simulated TensorRT and CUDA runtime, for testing our plumbing on a CPU.

It implements the slice of the TensorRT 10 Python API and of cuda-python's
runtime that dcae_deploy/export/tensorrt_build.py and dcae_deploy/runtime/tensorrt_backend.py call,
with the semantics those modules rely on: a "plan" is the ONNX graph plus its
profile, an engine runs it with onnxruntime on the CPU, device memory is host
memory, and copies are memmoves between the addresses our code hands over.
So a test through it checks our buffers, shapes, bindings, copies, manifest
records and refusals, and that bitstreams come out identical to onnxruntime's
(the arithmetic is the same); it says nothing about TensorRT itself, whose
names and behaviour here are our reading of its documentation.
"""
from __future__ import annotations

import ctypes
import json
from types import SimpleNamespace

import numpy as np

__version__ = "10.99.0-simulated"


class Logger:
    WARNING = 2

    def __init__(self, severity=None):
        self.severity = severity


NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
BuilderFlag = SimpleNamespace(TF32=7)
MemoryPoolType = SimpleNamespace(WORKSPACE=0)
TensorIOMode = SimpleNamespace(INPUT="input", OUTPUT="output")
built_configs = []  # every builder config, for tests to inspect


def nptype(dtype):
    return dtype


class _Network:
    def __init__(self, flags):
        self.flags = flags
        self.onnx = None


class OnnxParser:
    def __init__(self, network, logger):
        self.network = network
        self.num_errors = 0

    def parse_from_file(self, path):
        with open(path, "rb") as f:
            self.network.onnx = f.read()
        return True

    def get_error(self, index):
        return "no error"


class _TimingCache:
    def __init__(self, data: bytes):
        self.data = data or b"simulated timing cache"

    def serialize(self):
        return self.data


class _Config:
    def __init__(self):
        self.cleared, self.profile, self.cache = set(), None, None

    def clear_flag(self, flag):
        self.cleared.add(flag)

    def set_memory_pool_limit(self, pool, size):
        pass

    def create_timing_cache(self, data):
        return _TimingCache(data)

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache
        return True

    def add_optimization_profile(self, profile):
        self.profile = profile


class _Profile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, low, opt, high):
        self.shapes[name] = [list(low), list(opt), list(high)]


class Builder:
    def __init__(self, logger):
        pass

    def create_network(self, flags):
        return _Network(flags)

    def create_builder_config(self):
        config = _Config()
        built_configs.append(config)
        return config

    def create_optimization_profile(self):
        return _Profile()

    def build_serialized_network(self, network, config):
        header = json.dumps({"profile": config.profile.shapes, "flags": network.flags}).encode()
        return len(header).to_bytes(4, "little") + header + network.onnx


class Runtime:
    def __init__(self, logger):
        pass

    def deserialize_cuda_engine(self, plan: bytes):
        size = int.from_bytes(plan[:4], "little")
        header = json.loads(plan[4 : 4 + size])
        return _Engine(plan[4 + size :], header["profile"])


class _Engine:
    def __init__(self, onnx_bytes, profile):
        import onnxruntime as ort

        self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self.profile = profile
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        types = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
        self.dtypes = {t.name: np.dtype(types[t.type]) for t in self.session.get_inputs() + self.session.get_outputs()}
        self.num_io_tensors = len(self.inputs) + len(self.outputs)

    def get_tensor_name(self, index):
        return (self.inputs + self.outputs)[index]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def get_tensor_profile_shape(self, name, profile_index):
        return self.profile[name]

    def create_execution_context(self):
        return _Context(self)


def _view(ptr: int, shape, dtype) -> np.ndarray:
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buffer = (ctypes.c_uint8 * nbytes).from_address(ptr)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


class _Context:
    def __init__(self, engine: _Engine):
        self.engine, self.shapes, self.addresses = engine, {}, {}
        self.executions = 0

    def set_input_shape(self, name, shape):
        low, _, high = self.engine.profile[name]
        if any(s < a or s > b for s, a, b in zip(shape, low, high)):
            return False
        self.shapes[name] = tuple(shape)
        self._outputs = None
        return True

    def _output_shapes(self):
        if getattr(self, "_outputs", None) is None:
            zeros = {n: np.zeros(self.shapes[n], self.engine.dtypes[n]) for n in self.engine.inputs}
            results = self.engine.session.run(self.engine.outputs, zeros)
            self._outputs = {n: r.shape for n, r in zip(self.engine.outputs, results)}
        return self._outputs

    def get_tensor_shape(self, name):
        return self.shapes[name] if name in self.engine.inputs else self._output_shapes()[name]

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def _run(self):
        self.executions += 1
        feed = {n: _view(self.addresses[n], self.shapes[n], self.engine.dtypes[n]).copy() for n in self.engine.inputs}
        results = self.engine.session.run(self.engine.outputs, feed)
        for name, result in zip(self.engine.outputs, results):
            result = np.ascontiguousarray(result, self.engine.dtypes[name])
            ctypes.memmove(self.addresses[name], result.ctypes.data, result.nbytes)

    def execute_async_v3(self, stream_handle):
        if cudart.capturing is not None:
            cudart.capturing.append(self._run)  # recorded, not run, as CUDA does
        else:
            self._run()
        return True


# ---- cuda-python's runtime API ----------------------------------------------------------

class _Cudart:
    """cudaError_t values are plain ints here (0 = success)."""

    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2, cudaMemcpyDeviceToDevice=3)
    cudaStreamCaptureMode = SimpleNamespace(cudaStreamCaptureModeGlobal=0, cudaStreamCaptureModeThreadLocal=1)

    def __init__(self):
        self.allocations: dict[int, np.ndarray] = {}
        self.capturing = None
        self.graph_launches = 0

    def cudaMalloc(self, nbytes):
        array = np.empty(nbytes + 256, np.uint8)
        ptr = (array.ctypes.data + 255) // 256 * 256  # cudaMalloc's alignment
        self.allocations[ptr] = array
        return 0, ptr

    def cudaFree(self, ptr):
        self.allocations.pop(ptr)
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        ctypes.memmove(dst, src, nbytes)
        return (0,)

    def cudaStreamCreate(self):
        return 0, 1

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = []
        return (0,)

    def cudaStreamEndCapture(self, stream):
        graph, self.capturing = self.capturing, None
        return 0, graph

    def cudaGraphInstantiate(self, graph, flags):
        return 0, list(graph)

    def cudaGraphLaunch(self, graph_exec, stream):
        self.graph_launches += 1
        for step in graph_exec:
            step()
        return (0,)

    def cudaGraphDestroy(self, graph):
        return (0,)

    def cudaGraphExecDestroy(self, graph_exec):
        return (0,)

    def cudaRuntimeGetVersion(self):
        return 0, 12060

    def cudaGetErrorName(self, err):
        return 0, b"cudaErrorSimulated"


cudart = _Cudart()


def install(monkeypatch, gpu_name: str = "Simulated GPU") -> None:
    """Make `import tensorrt`, cuda-python and the GPU probe resolve to this simulation."""
    import sys

    import dcae_deploy.runtime.gpu
    import dcae_deploy.runtime.tensorrt_backend

    global cudart
    cudart = _Cudart()
    built_configs.clear()
    gpu = dcae_deploy.runtime.gpu.GpuInfo(gpu_name, "9.0", "12.4")
    monkeypatch.setitem(sys.modules, "tensorrt", sys.modules[__name__])
    monkeypatch.setattr(dcae_deploy.runtime.gpu, "cudart", lambda: cudart)
    monkeypatch.setattr(dcae_deploy.runtime.tensorrt_backend, "cudart", lambda: cudart)
    monkeypatch.setattr(dcae_deploy.runtime.gpu, "probe_gpu", lambda device=0: gpu)
    monkeypatch.setattr(dcae_deploy.runtime.tensorrt_backend, "probe_gpu", lambda device=0: gpu)
    monkeypatch.setattr(dcae_deploy.runtime.tensorrt_backend, "gpu_unavailable_reason", lambda: None)
