"""Speed and memory of one setup, measured in a fresh process of its own.

    python -m dcae_deploy.bench.measure SPEC.json RESULT.json     (dcae-bench runs this)

One process per setup, so that each setup's peak memory is its own and no
setup runs warmed by another's caches. Memory is the peak resident set size
(VmHWM in /proc/self/status): the process resets the peak after its imports
(writing 5 to /proc/self/clear_refs), so `peak_delta_mb` = peak RSS during
load + coding - RSS before the bundle (or checkpoint) was loaded. Where the
reset is not allowed, the peak since process start is used and said so.

A second fresh process per setup loads it and only decodes the files the
first one wrote (`measure_decode_memory`): the peak memory of a decoder host,
which the first process's peak (load + encode + decode) does not show.

Per image: one warm-up encode + decode, then `repeats` timed runs of each.
The first image's warm-up is kept as `first_call_seconds`. A setup that
compiles at its first call (torch-compile: `torch.compile` compiles each piece
when it first runs) has it counted in its load time. Its processes share the
inductor cache `inductor_cache` (TORCHINDUCTOR_CACHE_DIR; dcae-bench gives
each run an empty one unless told otherwise), so the first measuring process
compiles from scratch (a cold compile: C++ kernels, precompiled headers) and
later ones (its decode-memory process, later rounds) start warm, as a
user's second run of a script does; `load_seconds_by_round` keeps both.
`dcae-bench --rounds N` measures every setup N times, round-robin, each time
in a fresh process, and pools the runs (`merge_rounds`): on a shared machine
whose load drifts, that spreads the drift over every setup instead of
charging it to whichever setup ran during it.
End-to-end times are wall-clock around `compress` / `decompress` (for the
runtime, `decompress` includes the container checks); stage times are the
coder's own `last_timings`. A runtime setup imports no torch here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from dcae_deploy import IMPORT_ROOT
from dcae_deploy.runtime.memory import peak_rss, proc_field_kib


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _memory_record(reset: bool, rss_before_kb: int) -> dict:
    """Peak RSS now and its rise over `rss_before_kb`, in MB, and how it was taken."""
    peak = peak_rss() // 1024
    return {
        "rss_before_load_mb": rss_before_kb / 1024,
        "peak_rss_mb": peak / 1024,
        "peak_delta_mb": (peak - rss_before_kb) / 1024,
        "method": ("peak RSS (VmHWM) of a fresh process per setup, reset after imports; delta from the RSS "
                   "before loading" if reset else
                   "peak RSS (VmHWM) since process start (reset not allowed here); delta from the RSS "
                   "before loading, so imports may be included"),
    }


def _import_reference_first(setup) -> None:
    if setup.kind == "torch":
        # Imported before the baseline: load time and memory delta are the
        # model's, not torch's import (peak_rss_mb still shows the total).
        from . import torch_reference  # noqa: F401


def spread(values: list[float]) -> dict:
    """Median, quartiles and range, in the unit given."""
    a = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(a)), "p25": float(np.percentile(a, 25)),
            "p75": float(np.percentile(a, 75)), "min": float(a.min()), "max": float(a.max()), "runs": int(a.size)}


def _stage_ms(runs: list[dict]) -> dict:
    """Median over runs of each stage's seconds, in ms ("total" left out)."""
    names = [k for k in runs[0] if k != "total"]
    return {k: 1e3 * float(np.median([r.get(k, 0.0) for r in runs])) for k in names}


def measure(spec: dict) -> dict:
    """Run one setup's timing and memory measurement in this process."""
    from dcae_deploy.runtime.imaging import load_image

    from .setups import Setup, open_setup

    setup = Setup(**spec["setup"])
    threads = spec.get("threads")
    images = [(Path(p).name, load_image(p)) for p in spec["images"]]
    repeats = max(1, int(spec["repeats"]))
    _import_reference_first(setup)

    reset = _reset_peak_rss()
    rss_before = proc_field_kib("/proc/self/status", "VmRSS") or 0
    t0 = time.perf_counter()
    coder = open_setup(setup, threads)
    load_seconds = time.perf_counter() - t0

    per_image, encoded_files = [], []
    encoded_dir = Path(spec["encoded_dir"]) if spec.get("encoded_dir") else None
    if encoded_dir is not None:
        encoded_dir.mkdir(parents=True, exist_ok=True)
    first_call_seconds = None
    for name, pixels in images:
        t0 = time.perf_counter()
        coder.decompress(coder.encode(pixels).data)  # warm-up: first-run allocations, JIT, caches
        if first_call_seconds is None:
            first_call_seconds = time.perf_counter() - t0
        enc_times, dec_times, enc_stages, dec_stages = [], [], [], []
        for _ in range(repeats):
            start = time.perf_counter()
            data = coder.encode(pixels).data
            enc_times.append(time.perf_counter() - start)
            enc_stages.append(dict(coder.timings))
            start = time.perf_counter()
            coder.decompress(data)
            dec_times.append(time.perf_counter() - start)
            dec_stages.append(dict(coder.timings))
        per_image.append({"image": name, "encode_s": enc_times, "decode_s": dec_times,
                          "encode_stages_ms": _stage_ms(enc_stages), "decode_stages_ms": _stage_ms(dec_stages)})
        if encoded_dir is not None:
            path = encoded_dir / f"{len(encoded_files)}.coded"
            path.write_bytes(data)
            encoded_files.append(str(path))

    compiles = bool(getattr(coder, "compiles_on_first_call", False))
    return {
        "setup": setup.name,
        "numeric_class": coder.numeric_class,
        "threads": threads,
        # for a setup that compiles at its first call: opening it + that call
        "load_seconds": load_seconds + (first_call_seconds if compiles else 0.0),
        "load_includes_first_call": compiles,
        "first_call_seconds": first_call_seconds,
        "images": per_image,
        "memory": _memory_record(reset, rss_before),
        "encoded_files": encoded_files,
        "torch_imported": "torch" in sys.modules,
    }


def measure_decode_memory(spec: dict) -> dict:
    """Load one setup and decode `spec["decode_files"]`, nothing else: the
    peak memory of a process that only decodes."""
    from .setups import Setup, open_setup

    setup = Setup(**spec["setup"])
    files = [Path(p).read_bytes() for p in spec["decode_files"]]
    _import_reference_first(setup)
    reset = _reset_peak_rss()
    rss_before = proc_field_kib("/proc/self/status", "VmRSS") or 0
    t0 = time.perf_counter()
    coder = open_setup(setup, spec.get("threads"))
    shapes = [list(coder.decompress(files[0]).shape)] if files else []
    # a decoder host's start: open + first decode (torch-compile: from the cache the first process filled)
    first_decode_seconds = time.perf_counter() - t0
    shapes += [list(coder.decompress(data).shape) for data in files[1:]]
    return {**_memory_record(reset, rss_before), "files": len(files), "decoded_shapes": shapes,
            "load_and_first_decode_seconds": first_decode_seconds}


def summarise(raw: dict) -> dict:
    """Per-setup speed figures from a `measure` result (all times in ms)."""
    images = raw["images"]
    encode = [1e3 * t for im in images for t in im["encode_s"]]
    decode = [1e3 * t for im in images for t in im["decode_s"]]
    enc_medians = [1e3 * float(np.median(im["encode_s"])) for im in images]
    dec_medians = [1e3 * float(np.median(im["decode_s"])) for im in images]

    def mean_stages(key):
        names = list(dict.fromkeys(k for im in images for k in im[key]))
        return {k: float(np.mean([im[key].get(k, 0.0) for im in images])) for k in names}

    return {
        "load_seconds": raw["load_seconds"],
        "load_includes_first_call": raw.get("load_includes_first_call", False),
        "load_seconds_by_round": raw.get("load_seconds_by_round", [raw["load_seconds"]]),
        "inductor_cache_was_empty_by_round": raw.get("inductor_cache_was_empty_by_round",
                                                     [raw.get("inductor_cache_was_empty")]),
        "first_call_seconds": raw.get("first_call_seconds"),
        "encode_ms": spread(encode),
        "decode_ms": spread(decode),
        # mean over images of each image's median
        "encode_ms_mean_of_medians": float(np.mean(enc_medians)),
        "decode_ms_mean_of_medians": float(np.mean(dec_medians)),
        "encode_images_per_second": 1e3 / float(np.mean(enc_medians)),
        "decode_images_per_second": 1e3 / float(np.mean(dec_medians)),
        "stages_ms": {"encode": mean_stages("encode_stages_ms"), "decode": mean_stages("decode_stages_ms")},
        "memory": raw["memory"],
        "decode_memory": raw.get("decode_memory"),
        "threads": raw["threads"],
        "torch_imported": raw["torch_imported"],
        "numeric_class": raw.get("numeric_class"),  # as the measuring process computed (its kernels)
        "per_image_ms": {im["image"]: {"encode": 1e3 * float(np.median(im["encode_s"])),
                                       "decode": 1e3 * float(np.median(im["decode_s"]))} for im in images},
    }


def merge_rounds(raws: list[dict]) -> dict:
    """One setup's `measure` results from several rounds (fresh processes at
    different times, interleaved with the other setups) as one result: the
    timed runs of each image pooled, each stage the mean over rounds of the
    round's median, load time the median, memory the round with the highest
    peak."""
    first = raws[0]
    images = []
    for k, image in enumerate(first["images"]):
        rounds = [raw["images"][k] for raw in raws]
        merged = {"image": image["image"]}
        for key in ("encode_s", "decode_s"):
            merged[key] = [t for r in rounds for t in r[key]]
        for key in ("encode_stages_ms", "decode_stages_ms"):
            names = list(dict.fromkeys(n for r in rounds for n in r[key]))
            merged[key] = {n: float(np.mean([r[key].get(n, 0.0) for r in rounds])) for n in names}
        images.append(merged)
    return {**first, "images": images, "rounds": len(raws),
            "load_seconds": float(np.median([raw["load_seconds"] for raw in raws])),
            "first_call_seconds": float(np.median([raw.get("first_call_seconds") or 0.0 for raw in raws])),
            "load_seconds_by_round": [raw["load_seconds"] for raw in raws],
            "inductor_cache_was_empty_by_round": [raw.get("inductor_cache_was_empty") for raw in raws],
            "memory": _highest_peak([raw["memory"] for raw in raws]),
            "decode_memory": _highest_peak([raw["decode_memory"] for raw in raws if raw.get("decode_memory")]),
            "torch_imported": any(raw["torch_imported"] for raw in raws)}


def _highest_peak(records: list[dict]) -> dict | None:
    return max(records, key=lambda m: m["peak_rss_mb"]) if records else None


def measure_in_subprocess(setup, images: list[str], repeats: int, threads: int | None, work: Path,
                          timeout: float | None = None, inductor_cache: Path | None = None) -> dict:
    """Run `measure` for one setup in a new Python process, then
    `measure_decode_memory` on the files it wrote in another (its result under
    "decode_memory"); raise RuntimeError with the child's error in one line
    when one fails (its whole stderr is kept next to its spec file).

    The children run in the repository, so every path in `setup`, `images`
    and `work` must be absolute."""
    from .setups import TORCH_COMPILE

    work.mkdir(parents=True, exist_ok=True)
    stem = setup.name.replace(":", "_").replace("/", "_")
    spec = {"setup": setup.to_dict(), "threads": threads}
    env, cold = {}, None
    if setup.backend == TORCH_COMPILE:  # see the module's docstring
        cache = Path(inductor_cache or work / "inductor_cache")
        cold = not (cache.is_dir() and any(cache.iterdir()))
        env["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    result = _run_child({**spec, "images": [str(p) for p in images], "repeats": repeats,
                         "encoded_dir": str(work / f"{stem}.coded")}, work / stem, setup.name, timeout, env)
    if cold is not None:
        result["inductor_cache_was_empty"] = cold
    if result.get("encoded_files"):
        result["decode_memory"] = _run_child({**spec, "mode": "decode_memory",
                                              "decode_files": result["encoded_files"]},
                                             work / f"{stem}.decode_memory", setup.name, timeout, env)
    return result


def _run_child(spec: dict, stem: Path, name: str, timeout: float | None, extra_env: dict | None = None) -> dict:
    spec_path, result_path = stem.with_name(stem.name + ".spec.json"), stem.with_name(stem.name + ".result.json")
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    from .setups import SETUP_ENV

    # torch-avx2, torch-sse41: their kernels from the start; extra_env: what the caller adds
    env = {**os.environ, **SETUP_ENV.get(spec["setup"]["backend"], {}), **(extra_env or {})}
    threads = spec.get("threads")
    if threads:
        # the same thread count for every library the child may use
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    repo = str(IMPORT_ROOT)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-m", "dcae_deploy.bench.measure", str(spec_path), str(result_path)],
                          capture_output=True, text=True, env=env, cwd=repo, timeout=timeout)
    if proc.returncode != 0 or not result_path.is_file():
        # The last line of a traceback is the exception itself: enough for the
        # report's one line; the traceback stays in the log for whoever digs.
        log_path = stem.with_name(stem.name + ".stderr.txt")
        log_path.write_text(proc.stderr)
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        what = "decode memory of " if spec.get("mode") == "decode_memory" else ""
        raise RuntimeError(f"measuring {what}{name} failed (exit {proc.returncode}): "
                           f"{lines[-1] if lines else 'no error output'} (details: {log_path})")
    return json.loads(result_path.read_text())


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m dcae_deploy.bench.measure SPEC.json RESULT.json", file=sys.stderr)
        return 2
    import warnings

    warnings.filterwarnings("ignore")
    spec = json.loads(Path(argv[0]).read_text())
    run = measure_decode_memory if spec.get("mode") == "decode_memory" else measure
    Path(argv[1]).write_text(json.dumps(run(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
