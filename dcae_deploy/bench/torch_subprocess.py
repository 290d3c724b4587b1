"""The PyTorch reference in a worker process with an environment of its own.

`torch-avx2` is the reference computing as a CPU without AVX-512 does:
`ATEN_CPU_CAPABILITY=avx2` and `ONEDNN_MAX_CPU_ISA=AVX2` select PyTorch's
and oneDNN's AVX2 kernels, whose float sums round differently from the
AVX-512 ones; `torch-sse41` (`ATEN_CPU_CAPABILITY=default`,
`ONEDNN_MAX_CPU_ISA=SSE41`) computes as a CPU without AVX2. Both variables
are read once, when the process first needs a kernel, so a process that
already runs torch cannot switch; dcae-bench's
coding pass (every setup in one process) therefore talks to a worker started
with them (`RemoteTorchCoder`), while the speed measurement, a fresh process
per setup anyway, starts that process with them and codes in it directly.

`RemoteTorchCoder` has the interface of `torch_coder.TorchCoder` (encode, decode,
decompress, timings, numeric_class, num_slices, reference.checkpoint and
reference.check_matches); an error in the worker is raised again here with
its class (`DesyncError`, `MarginError`, `ReferenceMismatchError`, ...), so
the decodability matrix counts refusals exactly as for an in-process setup.

    python -m dcae_deploy.bench.torch_subprocess     (the worker: requests on stdin, replies on stdout)
"""
from __future__ import annotations

import importlib
import os
import pickle
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

from dcae_deploy import IMPORT_ROOT

_LENGTH = struct.Struct("<Q")
_REPO = IMPORT_ROOT


def _write(stream, message) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _read(stream):
    """The next message, or None at the end of the stream."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    size = _LENGTH.unpack(head)[0]
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


class WorkerError(RuntimeError):
    """The worker failed with an exception of a class this process cannot rebuild, or died."""


def _rebuild(module: str, name: str, message: str) -> Exception:
    """The worker's exception as the same class here (its name is what the matrix counts)."""
    try:
        cls = getattr(importlib.import_module(module), name)
        if isinstance(cls, type) and issubclass(cls, Exception):
            return cls(message)
    except Exception:  # noqa: BLE001 - not importable or not constructible from a message
        pass
    return type(name, (WorkerError,), {})(message)


class _RemoteReference:
    """What dcae-bench asks of a torch setup's `reference`."""

    compiled: tuple = ()  # the worker runs the eager reference (torch-compile is a setup of its own)

    def __init__(self, coder: RemoteTorchCoder, checkpoint: str):
        self._coder = coder
        self.checkpoint = Path(checkpoint)

    def check_matches(self, manifest) -> str | None:
        light = SimpleNamespace(model=manifest.model, source_checkpoint_sha256=manifest.source_checkpoint_sha256,
                                portable_margin=manifest.portable_margin)
        return self._coder._call("check_matches", light)


class RemoteTorchCoder:
    """A `torch_coder.TorchCoder` in a worker process started with `env` added to this one's environment."""

    def __init__(self, setup, threads: int | None, env: dict[str, str]):
        self._stderr = tempfile.TemporaryFile()
        child_env = {**os.environ, **env}
        child_env["PYTHONPATH"] = str(_REPO) + (os.pathsep + child_env["PYTHONPATH"]
                                                if child_env.get("PYTHONPATH") else "")
        if threads:
            child_env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self._proc = subprocess.Popen([sys.executable, "-m", "dcae_deploy.bench.torch_subprocess"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._stderr, env=child_env, cwd=_REPO)
        self.timings: dict = {}
        try:
            info = self._call("open", setup.to_dict(), threads)
        except BaseException:
            self.close()
            raise
        self.numeric_class, self.num_slices = info["numeric_class"], info["num_slices"]
        self.reference = _RemoteReference(self, info["checkpoint"])

    def _call(self, op: str, *args):
        if self._proc.poll() is not None:
            raise WorkerError(f"the torch worker has exited ({self._proc.returncode}): {self._stderr_tail()}")
        try:
            _write(self._proc.stdin, (op, args))
            reply = _read(self._proc.stdout)
        except (BrokenPipeError, OSError) as exc:
            raise WorkerError(f"the torch worker is gone ({exc}): {self._stderr_tail()}") from None
        if reply is None:
            self._proc.wait(timeout=30)
            raise WorkerError(f"the torch worker exited ({self._proc.returncode}) during {op}: {self._stderr_tail()}")
        status, payload, self.timings = reply
        if status == "error":
            raise _rebuild(*payload)
        return payload

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        lines = [line.strip() for line in self._stderr.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else "no error output"

    codes_qualities = True  # the worker's reference runs on the CPU

    def encode(self, pixels, quality: float | None = None):
        return self._call("encode", pixels, quality)

    def decode(self, data: bytes, force: bool = False, synthesize: bool = True):
        return self._call("decode", bytes(data), force, synthesize)

    def decompress(self, data: bytes):
        return self.decode(data).x

    def close(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.stdin.close()  # the worker ends at the end of its input
            proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()

    def __del__(self):
        self.close()


def serve(requests, replies) -> None:
    """The worker's loop: (op, args) in, ("ok", result, timings) or ("error", (module, class, message), timings) out."""
    from .setup_types import SETUP_ENV, Setup, environment_in_effect
    from .torch_coder import TorchCoder

    coder = None
    while (request := _read(requests)) is not None:
        op, args = request
        try:
            if op == "open":
                setup, threads = args
                setup = Setup(**setup)
                if not environment_in_effect(SETUP_ENV.get(setup.backend, {})):
                    raise WorkerError("the worker's environment does not select the setup's kernels")
                coder = TorchCoder(setup, threads)
                result = {"numeric_class": coder.numeric_class, "num_slices": coder.num_slices,
                          "checkpoint": str(coder.reference.checkpoint)}
            elif op == "check_matches":
                result = coder.reference.check_matches(*args)
            elif op in ("encode", "decode"):
                result = getattr(coder, op)(*args)
            else:
                raise WorkerError(f"unknown request {op!r}")
            reply = ("ok", result, dict(coder.timings) if coder else {})
        except Exception as exc:  # noqa: BLE001 - every error goes back to the caller, with its class
            reply = ("error", (type(exc).__module__, type(exc).__qualname__, " ".join(str(exc).split())),
                     dict(coder.timings) if coder else {})
        _write(replies, reply)


def main() -> int:
    import warnings

    warnings.filterwarnings("ignore")
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the replies
    sys.stdout = sys.stderr
    serve(sys.stdin.buffer, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
