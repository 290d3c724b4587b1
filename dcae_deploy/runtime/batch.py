"""Dataset-scale coding on Ray Data: `dcae batch compress|decompress`.

    from dcae_deploy.runtime.batch import run_batch
    summary = run_batch("compress", ["photos/"], "coded/", bundle="bundle/", workers=4)

The driver lists the inputs and plans one output per input (the names
`dcae compress|decompress` would write), then maps the (input, output) PATHS
over a pool of Ray actors. Each actor opens the bundle once (one `Codec`,
`threads` threads per graph), reads its inputs and writes its outputs itself:
no image data passes through the driver or Ray's object store, only paths and
one results line per input. So the inputs, the outputs and the bundle must be
at the same paths on every node (one machine, or a shared filesystem).

Resumable: each output is written atomically (temporary file + rename), and an
input whose output already exists and is valid (`dcae_deploy.runtime.filejobs`) is skipped.
Every input gets one line in the results file (JSON Lines), failed ones with
their reason; a failing input never stops the job.

Ray is an optional extra (`pip install 'dcae-deploy[ray]'`); this module
imports it only inside `run_batch` / `start_local_ray`, and the rest of the
runtime never imports it.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dcae_deploy import IMPORT_ROOT
from .errors import BadInputError, DcaeError
from .filejobs import FAILED, NOT_RUN, OK, SKIPPED, FileJob, code_one, expected_header_fields, one_line
from .inputs import CODED_SUFFIXES, IMAGE_SUFFIXES, expand_inputs, plan_outputs, read_path_list
from .portable import MODEL_MARGIN
from .quality import RateChoice

RAY_INSTALL_HINT = "pip install 'dcae-deploy[ray]' (in a source checkout: pip install -e '.[ray]')"
RESULTS_NAME = "results.jsonl"
# Only paths and results lines go through the object store: a small one does.
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20
# At most this many Ray Data blocks: up to it, every input is a block of its
# own (finest load balance, progress per input); beyond, inputs share blocks.
MAX_BLOCKS = 10_000


class RayMissingError(DcaeError):
    """Ray (the `[ray]` extra) is not installed or cannot be imported."""


def import_ray():
    """`ray`, with Ray Data importable; else `RayMissingError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (needs pyarrow and pandas: part of the extra)
    except ImportError as exc:
        if getattr(exc, "name", None) == "ray" or "No module named 'ray'" in str(exc):
            raise RayMissingError(f"dcae batch needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
        raise RayMissingError(f"Ray is installed but cannot be imported ({one_line(exc)}); "
                              f"reinstall it with {RAY_INSTALL_HINT}") from None
    return ray


def _package_root() -> str:
    return str(IMPORT_ROOT)


def start_local_ray(num_cpus: int | None = None, object_store_memory: int = LOCAL_OBJECT_STORE_BYTES, **kwargs):
    """Start a Ray instance on this machine for `run_batch`: no dashboard,
    quiet, a small object store, and workers that import this very copy of
    the package (a source checkout may not be the installed one)."""
    ray = import_ray()
    options = dict(num_cpus=num_cpus, object_store_memory=object_store_memory, include_dashboard=False,
                   logging_level=logging.ERROR, log_to_driver=False)
    options.update(kwargs)
    # The Ray processes started here inherit this environment. PYTHONPATH
    # (not a runtime_env, which would keep actors off Ray's pre-started
    # worker processes and cost seconds each) makes them import this copy.
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), previous) if p)
    try:
        return ray.init(**options)
    finally:
        if previous is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = previous


# ---- the actor ---------------------------------------------------------------------------------

class BatchWorker:
    """One Ray actor: opens the bundle once, then codes the inputs it is given."""

    def __init__(self, job: FileJob):
        self.job = job
        self.codec = job.open_codec()
        self.expected = expected_header_fields(self.codec, job.margin, job.rate) if job.mode == "compress" else None

    def __call__(self, row: dict) -> dict:
        record = code_one(self.codec, self.job, row["input"], row["output"], self.expected)
        # One string column: Arrow never has to unify nullable fields across blocks.
        return {"index": row["index"], "record": json.dumps(record)}


# ---- the driver ------------------------------------------------------------------------------

@dataclass
class BatchSummary:
    mode: str
    total: int
    results: str  # the results file
    counts: dict = field(default_factory=lambda: {OK: 0, SKIPPED: 0, FAILED: 0, NOT_RUN: 0})
    seconds: float = 0.0  # from the first input submitted to the last result
    startup_seconds: float = 0.0  # starting or joining Ray
    workers: str = ""
    coded_bytes: int = 0  # .dcae bytes written (compress) or read (decompress) for inputs coded now
    failures: list = field(default_factory=list)  # (input, error)
    stopped: str | None = None  # why the job ended before every input was tried

    @property
    def images_per_second(self) -> float:
        """Inputs coded (not skipped) per second of the job."""
        return self.counts[OK] / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_status(self) -> int:
        return 0 if not (self.counts[FAILED] or self.counts[NOT_RUN]) else 1

    def lines(self) -> list[str]:
        c = self.counts
        out = [f"{self.mode}: {self.total} inputs: {c[OK]} coded, {c[SKIPPED]} skipped (valid output there), "
               f"{c[FAILED]} failed" + (f", {c[NOT_RUN]} not run" if c[NOT_RUN] else ""),
               f"{self.seconds:.1f} s on {self.workers} (Ray start {self.startup_seconds:.1f} s): "
               f"{self.images_per_second:.2f} images/s coded, {self.coded_bytes} coded bytes",
               f"results: {self.results}"]
        if self.stopped:
            out.append(f"stopped: {self.stopped}")
        for source, error in self.failures[:10]:
            out.append(f"failed: {source}: {error}")
        if len(self.failures) > 10:
            out.append(f"... and {len(self.failures) - 10} more failures (see the results file)")
        return out


def list_jobs(mode: str, sources: list[str], output_dir: str, files_from: list[str] = ()) -> list[tuple[str, str]]:
    """(input, output) absolute paths: the inputs named by `sources`
    (files, directories, globs, as `dcae compress|decompress` takes them) and
    by each list file, without duplicates, each with its output in
    `output_dir` under the name the single-process command gives it."""
    suffixes, what, suffix = ((IMAGE_SUFFIXES, "image", ".dcae") if mode == "compress"
                              else (CODED_SUFFIXES, ".dcae or .bin", ".png"))
    inputs: list[Path] = []
    if sources:
        inputs += expand_inputs(list(sources), suffixes, what)[0]
    for list_file in files_from:
        inputs += read_path_list(list_file)
    inputs = list(dict.fromkeys(Path(os.path.abspath(p)) for p in inputs))
    if not inputs:
        raise BadInputError("no inputs: name files, directories or globs, or --files-from LIST")
    targets = plan_outputs(inputs, False, os.path.abspath(output_dir) + os.sep, suffix)
    return [(str(s), str(t)) for s, t in zip(inputs, targets)]


def _check_setup(job: FileJob):
    """Open the codec once on the driver, so that a missing bundle, an
    unavailable backend or a margin the backend cannot honour is one error
    before any actor starts, not one per input."""
    codec = job.open_codec()
    margin = codec.resolve_margin(job.margin)
    if job.mode == "compress" and margin is not None and codec.portable:
        problem = codec.margin_problem(margin)
        if problem:
            raise BadInputError(problem)
    return codec


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """For a HOST:PORT address, fail in one line when nothing listens there
    (Ray itself retries such an address for minutes)."""
    import socket

    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or "://" in address:
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise BadInputError(f"cannot join the Ray cluster at {address}: nothing answers there "
                            f"({exc.strerror or type(exc).__name__})") from None


def _parse_workers(workers, cluster_cpus: float, threads: int) -> tuple[int, int]:
    """(min, max) actors: a fixed N, a (min, max) pair, or None: 1 up to as
    many as the cluster's CPUs hold at `threads` CPUs each (Ray Data scales
    the pool between them with the backlog)."""
    if workers is None:
        return 1, max(1, int(cluster_cpus // threads))
    if isinstance(workers, int):
        return workers, workers
    low, high = workers
    return int(low), int(high)


def run_batch(mode: str, sources: list[str], output_dir: str, *, files_from: list[str] = (),
              bundle: str, backend: str = "onnxruntime", threads: int = 1, workers=None,
              margin: float | str | None = MODEL_MARGIN, force: bool = False, redo: bool = False,
              results: str | None = None, address: str | None = None, num_cpus: int | None = None,
              worker_memory: float | None = None, memory_limit: int | None = None,
              rate: RateChoice | None = None, progress=None) -> BatchSummary:
    """Code every input to `output_dir` on Ray actors; the summary.

    `workers`: N actors, a (min, max) pair, or None (autoscale from 1 to the
    cluster's CPUs / `threads`). `address` joins a running Ray cluster;
    otherwise a Ray already started in this process is used, or a local one
    is started (`num_cpus`) and shut down at the end. `worker_memory`: bytes
    Ray reserves per actor; `memory_limit`: each actor's peak memory in
    bytes (`Codec`'s: its image transforms tile within it); `rate`: compress's quality or size
    target (None: quality 50). `progress(record, summary)` is called on the
    driver for each results line as it arrives. Results lines go to
    `results` (default `output_dir/results.jsonl`), one per input, in the
    order inputs finish; inputs never tried (Ctrl-C, a Ray failure) are
    written as `not-run` at the end.
    """
    if mode not in ("compress", "decompress"):
        raise ValueError(f"mode must be compress or decompress, got {mode!r}")
    ray = import_ray()  # first: without Ray, say so before anything else
    pairs = list_jobs(mode, sources, output_dir, files_from)
    job = FileJob(mode, os.path.abspath(bundle), backend, threads, margin if mode == "compress" else None,
                  force, redo, memory_limit, rate or RateChoice())
    _check_setup(job)
    results_path = Path(results or Path(output_dir) / RESULTS_NAME).absolute()
    summary = BatchSummary(mode, len(pairs), str(results_path))

    started = time.perf_counter()
    own_ray = False
    if address is not None:
        if ray.is_initialized():
            raise BadInputError("a Ray instance is already running in this process; do not pass an address")
        _check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        except Exception as exc:
            raise BadInputError(f"cannot join the Ray cluster at {address} ({one_line(exc)[:300]})") from None
        own_ray = True
    elif not ray.is_initialized():
        start_local_ray(num_cpus)
        own_ray = True
    try:
        summary.startup_seconds = time.perf_counter() - started
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        results_path.parent.mkdir(parents=True, exist_ok=True)
        _run(ray, job, pairs, results_path, summary, workers, worker_memory, progress)
    finally:
        if own_ray:
            ray.shutdown()
    return summary


def _run(ray, job, pairs, results_path, summary, workers, worker_memory, progress) -> None:
    import ray.data
    from ray.data import ActorPoolStrategy

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours is per input and knows about failures
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    # A block whose actor died is dropped rather than ending the job: its
    # inputs have no results line at the end and are reported as not run.
    context.max_errored_blocks = -1
    logging.getLogger("ray").setLevel(logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.ERROR)

    low, high = _parse_workers(workers, ray.cluster_resources().get("CPU", 1), job.threads or 1)
    summary.workers = (f"{low} worker{'s' if low > 1 else ''}" if low == high else f"{low}-{high} workers") + \
        f" x {job.threads or 'all'} thread{'s' if job.threads != 1 else ''}"
    items = [{"index": i, "input": s, "output": t} for i, (s, t) in enumerate(pairs)]
    dataset = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS))
    coded = dataset.map(BatchWorker, fn_constructor_kwargs={"job": job},
                        compute=ActorPoolStrategy(min_size=low, max_size=high, max_tasks_in_flight_per_actor=2),
                        num_cpus=job.threads or 1, memory=worker_memory or None)

    seen = [False] * len(pairs)
    started = time.perf_counter()
    with open(results_path, "w", encoding="utf-8") as out:
        def emit(record: dict) -> None:
            out.write(json.dumps(record) + "\n")
            out.flush()
            summary.counts[record["status"]] += 1
            if record["status"] == FAILED:
                summary.failures.append((record["input"], record["error"]))
            elif record["status"] == OK:
                summary.coded_bytes += record["bytes"] or 0
            summary.seconds = time.perf_counter() - started
            if progress is not None:
                progress(record, summary)

        try:
            for row in coded.iter_rows():
                index = int(row["index"])
                if seen[index]:  # a retried block can deliver an input twice
                    continue
                seen[index] = True
                record = json.loads(row["record"])
                record["index"] = index
                emit(record)
        except KeyboardInterrupt:
            summary.stopped = "interrupted"
            raise
        except Exception as exc:  # Ray itself failed: still account for every input
            summary.stopped = f"Ray failed ({one_line(exc)[:300]})"
        finally:
            reason = summary.stopped or "no result came back (its worker died?); run again to retry"
            for index, (source, target) in enumerate(pairs):
                if not seen[index]:
                    emit({"input": source, "output": target, "status": NOT_RUN, "bytes": None, "bpp": None,
                          "seconds": None, "error": reason, "warnings": [], "worker": None, "index": index})
            summary.seconds = time.perf_counter() - started


def print_progress_factory(stream=sys.stderr, interval: float = 10.0):
    """A `progress` callback for the CLI: each failure and warning as one
    line when it happens, and a bar on a terminal or else a status line
    every `interval` seconds."""
    from tqdm import tqdm

    state = {"bar": None, "last": time.perf_counter()}

    def progress(record: dict, summary: BatchSummary) -> None:
        bar = state["bar"]
        if bar is None and stream.isatty():
            bar = state["bar"] = tqdm(total=summary.total, file=stream, unit="img", leave=False)
        write = (lambda m: tqdm.write(m, file=stream)) if bar is not None else (lambda m: print(m, file=stream))
        for warning in record.get("warnings") or ():
            write(f"dcae: warning: {record['input']}: {warning}")
        if record["status"] == FAILED or (record["status"] == NOT_RUN and summary.stopped != "interrupted"):
            write(f"dcae: error: {record['input']}: {record['error']}")
        done = sum(summary.counts.values())
        c = summary.counts
        if bar is not None:
            bar.update()
            bar.set_postfix_str(f"{c[OK]} coded, {c[SKIPPED]} skipped, {c[FAILED]} failed", refresh=False)
            if done == summary.total:
                bar.close()
        elif time.perf_counter() - state["last"] >= interval or done == summary.total:
            state["last"] = time.perf_counter()
            print(f"dcae: {done}/{summary.total} done ({c[OK]} coded, {c[SKIPPED]} skipped, {c[FAILED]} failed), "
                  f"{summary.images_per_second:.2f} images/s", file=stream)

    return progress
