"""`dcae-bench`: PyTorch vs ONNX Runtime vs TensorRT on real images, and the
cross-backend decodability matrix.

    dcae-bench --bundle B [--bundle B2 ...] --images DIR --out DIR
               [--backends torch,torch-compile,torch-cuda,onnxruntime,onnxruntime-cuda,tensorrt] [--limit N]
               [--repeats R] [--rounds N] [--threads T] [--checkpoint C] [--speed-only | --no-matrix | --no-speed]
               [--matrix-images N] [--matrix-pixels N] [--qualities Q1,Q2,... [--codecs jpeg,webp,avif,jxl]]
               [--sizes MP1,MP2,... [--sizes-only] [--size-memory-cap [SETUP=]SIZE] [--memory-limit SIZE]]

Setups: the PyTorch reference ("torch" on the CPU, "torch-avx2" and
"torch-sse41" on the CPU with the AVX2 or SSE4.1 kernels of other CPU
families, "torch-compile" with torch.compile
on its networks, "torch-cuda" on a GPU, from the bundles' source checkpoint)
and each bundle on each runtime backend ("onnxruntime:fp32", "openvino:fp32",
"cpp-openvino:fp32"). The report's roofline table gives each stage's FLOPs
(from the bundles' export_report.json), its achieved GFLOP/s and the fraction
of this machine's fp32 / int8 GEMM peak, measured by the bench at its thread
count (dcae_deploy/bench/roofline.py). Writes to --out:
report.json, report.md, latency_by_stage.png, rate_distortion.png; the coded
files and decoded images go to --files (default OUT/files). Relative paths
are taken from the current directory.

--qualities codes every image at each quality (0..100, the runtime's and the
reference's quality knob; 50 = the model's reference rate, what the bench
codes without it): the decodability matrix then has a cell per quality,
encoder and decoder, and the report adds each setup's rate-distortion curve
(rd_curves.png, PSNR and MS-SSIM against bpp) with those of the --codecs
(dcae_deploy.bench.codecs, measured on the same images) and the BD-rate of
each setup against each codec. A setup that writes the reference rate only
(the reference on a GPU, the C++ host) codes quality 50 alone and decodes
every quality's files. Timing, the headline and the per-image table stay at
one quality: 50, or the given one nearest to it.

--sizes adds the Scaling section (dcae_deploy/bench/scaling.py): a mosaic
of the images at each size in megapixels, coded and decoded by each setup in
fresh processes (`dcae compress/decompress`, `dcae-host`, the reference in
a process of its own): time, time per MP against the smallest size, peak
RSS. Each process on the CPU runs under an address-space cap
(--size-memory-cap): a size that needs more is "out of memory at N MP" and
the run goes on. --sizes-only runs that section alone.

Exit status: 0 (also when a setup cannot run here, e.g. no GPU: the report
lists it with the reason); 2 for a usage error (no images, a checkpoint that
is not the bundles' model); 3 when a runtime setup decoded a file WRONGLY
WITHOUT AN ERROR; 5 when a portable file failed to decode on another setup
that writes portable files (refused: the portability promise broken, safely);
4 when the speed of a setup that runs here could not be measured, or a
--sizes process failed for another reason than memory. For 3, 4
and 5 the report is written first and says so at the top.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

EXIT_USAGE, EXIT_SILENT_WRONG, EXIT_MEASUREMENT_FAILED, EXIT_PORTABLE_FAILED = 2, 3, 4, 5


def build_parser() -> argparse.ArgumentParser:
    from dcae_deploy.runtime.fileio import absolute_path

    from .setups import DEFAULT_BACKENDS

    # Every path is made absolute here: the measuring processes run in the
    # repository, not in the caller's directory.
    p = argparse.ArgumentParser(prog="dcae-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", action="append", required=True, metavar="DIR", type=absolute_path,
                   help="a bundle directory (dcae-export); repeat for several")
    p.add_argument("--images", required=True, metavar="DIR", type=absolute_path,
                   help="folder of test images (e.g. Kodak)")
    p.add_argument("--out", required=True, metavar="DIR", type=absolute_path,
                   help="where report.json, report.md and plots go")
    p.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                   help=f"comma-separated: 'torch' (the PyTorch reference on the CPU, the speed-up baseline), "
                        f"'torch-avx2' (the reference with the AVX2 kernels of a CPU without AVX-512, in a "
                        f"process of its own), 'torch-sse41' (the same with the SSE4.1 kernels of a CPU "
                        f"without AVX2: on an AVX2-only CPU, the float path other than the default), "
                        f"'torch-compile' (the reference with torch.compile on its networks: needs a C++ "
                        f"compiler; its load time includes the compile, minutes for the official model), "
                        f"'torch-cuda' (the reference on a CUDA GPU), runtime backends and 'cpp-openvino' (the "
                        f"C++ host, hosts/cpp, built first) "
                        f"(default: {','.join(DEFAULT_BACKENDS)}); those that cannot run here are reported "
                        f"as not available")
    p.add_argument("--checkpoint", default=None, type=absolute_path,
                   help="the bundles' source checkpoint for the torch setup (default: the embedded model); "
                        "refused if it is not the model the bundles were exported from")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N images (sorted)")
    p.add_argument("--repeats", type=int, default=3, metavar="R",
                   help="timed runs per image after one warm-up (default: 3)")
    p.add_argument("--rounds", type=int, default=1, metavar="N",
                   help="measure every setup N times, the setups in turn, each time in a fresh process (with "
                        "its own warm-up), and pool the runs: on a shared machine whose load drifts, the drift "
                        "then falls on every setup alike (default: 1)")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="threads for every setup (default: each library's own default)")
    p.add_argument("--inductor-cache", default=None, metavar="DIR", type=absolute_path,
                   help="torch-compile's inductor cache (TORCHINDUCTOR_CACHE_DIR), kept: a cache that earlier "
                        "runs filled makes its load time a warm start. Default: an empty one for this run, "
                        "removed at the end, so the first round's load time is a cold compile and later "
                        "rounds' warm starts")
    p.add_argument("--files", default=None, metavar="DIR", type=absolute_path,
                   help="where coded files and decoded images go (default: OUT/files)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--speed-only", action="store_true",
                      help="timing and memory only: no rate-distortion, no decodability matrix")
    mode.add_argument("--no-matrix", action="store_true", help="skip the cross-decoding matrix")
    mode.add_argument("--no-speed", action="store_true",
                      help="rate-distortion and the decodability matrix only: no timing, memory or roofline "
                           "(the matrix on many images, where the speed was measured in another run)")
    mode.add_argument("--sizes-only", action="store_true",
                      help="with --sizes: the Scaling section only (no timing, rate-distortion or matrix)")
    p.add_argument("--matrix-images", type=int, default=None, metavar="N",
                   help="cross-decode the files of the first N images only (default: every image); every "
                        "image is still coded and decoded by its own setup for rate-distortion. The matrix "
                        "costs setups x setups decodes per image: this bounds it on many setups")
    p.add_argument("--matrix-pixels", type=int, default=None, metavar="N",
                   help="the matrix's decodes of the first N images' files synthesize the image and compare "
                        "its pixels; those of later images read the symbols and check the stream's end only, "
                        "skipping g_s, which cannot change a symbol and is most of a decode's time "
                        "(default: every image)")
    p.add_argument("--qualities", default=None, metavar="Q1,Q2,...",
                   help="code every image at each of these qualities (0..100; 50: the model's reference rate): "
                        "a decodability matrix per quality, and rate-distortion curves against --codecs with "
                        "BD-rates (default: quality 50 only, no curves)")
    p.add_argument("--codecs", default="jpeg,webp,avif,jxl", metavar="LIST",
                   help="with --qualities: the codecs whose curves (their whole quality sweep on the same images) "
                        "the setups' curves are compared with: a comma-separated subset of jpeg,webp,avif,jxl, or "
                        "none (default: all four; those this Pillow lacks are listed as not available)")
    p.add_argument("--no-jpeg", action="store_true", help="skip the JPEG comparison")
    p.add_argument("--sizes", default=None, metavar="MP1,MP2,...",
                   help="the Scaling section: a mosaic of the images at each size in megapixels (e.g. "
                        "0.4,3,12,24; the images' aspect ratio, even dimensions), coded and decoded by every "
                        "setup in fresh processes (dcae, dcae-host, the reference in a process of its own): "
                        "encode and decode time, time per MP and peak RSS. A size that runs out of memory under "
                        "--size-memory-cap is reported as 'out of memory at N MP' and the setup's larger sizes "
                        "are not tried")
    p.add_argument("--size-memory-cap", action="append", default=[], metavar="[SETUP=]SIZE",
                   help="the address space each --sizes process on the CPU may map, e.g. 12G: a process that "
                        "needs more fails and the size is reported as out of memory. SETUP=SIZE caps one setup "
                        "(e.g. torch=8G); repeat for several (default: 80%% of the memory available at the "
                        "start; none for GPU setups)")
    p.add_argument("--memory-limit", default=None, metavar="SIZE",
                   help="with --sizes: the runtime's and the C++ host's --memory-limit (the process's memory: "
                        "g_a and g_s run in tiles within what is left of it), e.g. 2G (default: theirs, half the "
                        "memory available for the transforms)")
    p.add_argument("--note", action="append", default=[], metavar="TEXT",
                   help="a line for the report's 'not available' list (e.g. why a bundle is missing)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def plan_setups(bundles, backends: list[str], checkpoint: str | None):
    from dcae_deploy.runtime.backends import backend_names
    from dcae_deploy.runtime.manifest import Manifest

    from .cpp_host import CPP_BACKENDS
    from .setups import TORCH, TORCH_DEVICES, Setup, describe_precision

    known = set(backend_names()) | set(TORCH_DEVICES) | set(CPP_BACKENDS)
    unknown = [b for b in backends if b not in known]
    if unknown:
        raise ValueError(f"unknown backend(s) {', '.join(unknown)}; known: "
                         f"{', '.join(TORCH_DEVICES)}, {', '.join(backend_names())}, {', '.join(CPP_BACKENDS)}")
    setups = []
    for backend in TORCH_DEVICES:  # the CPU reference first: it is the speed-up baseline
        if backend in backends:
            setups.append(Setup(backend, TORCH, backend, "fp32", checkpoint=checkpoint))
    for backend in backends:
        if backend in TORCH_DEVICES:
            continue
        for b in bundles:
            setups.append(Setup(f"{backend}:{b.label}", "runtime", backend,
                                describe_precision(Manifest.read(b.path)), bundle=b.label, bundle_path=b.path))
    return setups


def open_available(setups, bundles, threads, say) -> dict:
    """Open every setup for the coding pass; mark those that cannot run here.
    The torch setup must be the bundles' model (ReferenceMismatchError if not)."""
    from dcae_deploy.runtime.manifest import Manifest

    from .setups import TORCH, open_setup

    coders = {}
    for setup in setups:
        try:
            coder = open_setup(setup, threads)
        except Exception as exc:  # noqa: BLE001 - any reason a setup cannot run is reported as such
            if setup.kind == TORCH and isinstance(exc, ValueError):
                raise  # a checkpoint that cannot be read (CheckpointError): the user's error
            setup.available, setup.reason = False, " ".join(str(exc).split()) or type(exc).__name__
            say(f"{setup.name}: not available: {setup.reason}")
            continue
        setup.numeric_class = coder.numeric_class
        if setup.kind == TORCH:
            setup.checkpoint = str(coder.reference.checkpoint)
            if coder.reference.compiled:
                setup.notes.append(
                    f"torch.compile (inductor, default mode, static shapes) on {', '.join(coder.reference.compiled)}: "
                    f"every network of the pipeline; its load time is the model's load plus the first image's "
                    f"encode and decode, which compile them, from an empty inductor cache")
            for b in bundles:  # raises ReferenceMismatchError: a usage error
                note = coder.reference.check_matches(Manifest.read(b.path))
                if note:
                    setup.notes.append(note)
        coders[setup.name] = coder
    return coders


def measure_speed(setups, images, repeats, threads, work: Path, say, rounds: int = 1,
                  peaks: list | None = None, inductor_cache: Path | None = None) -> tuple[dict, dict]:
    """({setup name: speed summary}, {setup name: why its measurement failed}).

    With `rounds` > 1 every setup is measured once per round, the setups in
    turn (see `dcae_deploy.bench.measure.merge_rounds`). With a `peaks` list, the
    machine's GEMM peaks are measured at the start of each round
    (`dcae_deploy.bench.roofline.measure_peaks`) and appended to it."""
    from .measure import measure_in_subprocess, merge_rounds, summarise

    raws: dict[str, list[dict]] = {}
    errors: dict[str, str] = {}
    for round_index in range(rounds):
        if peaks is not None:
            from .roofline import measure_peaks

            try:
                peaks.append(measure_peaks(threads))
                bf16 = peaks[-1].get("bf16_gflops")
                say(f"GEMM peaks: fp32 {peaks[-1]['fp32_gflops']:.0f} GFLOP/s, int8 "
                    f"{peaks[-1]['int8_gops']:.0f} GOP/s (onnxruntime)"
                    + (f", bf16 {bf16:.0f} GFLOP/s (OpenVINO)" if bf16 else "") + ", best of the runs")
            except Exception as exc:  # noqa: BLE001 - the roofline then shows no fractions; the run goes on
                say(f"GEMM peak measurement failed: {' '.join(str(exc).split())}")
        for setup in setups:
            if not setup.available or setup.name in errors:
                continue
            t0 = time.perf_counter()
            try:
                extra = {"inductor_cache": inductor_cache} if inductor_cache else {}
                raw = measure_in_subprocess(setup, images, repeats, threads, work, **extra)
            except Exception as exc:  # noqa: BLE001 - reported, and the other setups go on
                errors[setup.name] = " ".join(str(exc).split())
                raws.pop(setup.name, None)
                say(f"{setup.name}: speed measurement failed: {errors[setup.name]}")
                continue
            raws.setdefault(setup.name, []).append(raw)
            speed = summarise(raw)
            round_label = f", round {round_index + 1}/{rounds}" if rounds > 1 else ""
            say(f"{setup.name}: encode {speed['encode_ms']['median']:.1f} ms, decode "
                f"{speed['decode_ms']['median']:.1f} ms (median; measured in {time.perf_counter() - t0:.0f} s"
                f"{round_label})")
    return {name: summarise(merge_rounds(runs)) for name, runs in raws.items()}, errors


def _speedups(setup_dicts: list[dict]) -> None:
    from .setups import TORCH, TORCH_COMPILE

    # the baselines are the reference on the CPU, eager and compiled, not torch-cuda
    for key, baseline in (("speedup_vs_torch", TORCH), ("speedup_vs_torch_compile", TORCH_COMPILE)):
        base = next((s.get("speed") for s in setup_dicts if s["name"] == baseline), None)
        for s in setup_dicts:
            if base and s.get("speed"):
                s[key] = {d: base[f"{d}_ms"]["median"] / s["speed"][f"{d}_ms"]["median"] for d in ("encode", "decode")}
            else:
                s[key] = None


def _reference_rate_only(setup) -> str:
    from .cpp_host import CPP_BACKENDS

    if setup.backend in CPP_BACKENDS:
        return "the C++ host's C interface, dcae_encode, takes no quality"
    return "upstream's .bin format, written on a GPU, has no gain field"


def _plan_scaling(args, setups, images) -> None:
    """Refuse (ValueError) sizes the images cannot make and caps of setups not planned,
    before anything is measured; the default cap goes into args.size_memory_cap."""
    from .scaling import default_cap, plan_sizes
    from .tiling_halo import mosaic_cells

    plan_sizes(mosaic_cells(images), args.sizes)
    names = {s.name for s in setups}
    unknown = [name for name in args.size_memory_cap if name is not None and name not in names]
    if unknown:
        raise ValueError(f"--size-memory-cap: no setup {', '.join(unknown)} in this run; setups: {', '.join(names)}")
    if None not in args.size_memory_cap:
        args.size_memory_cap[None] = default_cap()


def run(args, say) -> int:
    from dcae_deploy.runtime.errors import DcaeError

    from .machine import load_average, machine_facts
    from .matrix import DEFAULT_QUALITY, coding_pass, silent_wrong_totals
    from .rd import rd_mean, setup_curves
    from .records import find_images, relative_paths
    from .report import portable_totals, write_report_files
    from .roofline import best_peaks, roofline
    from .scaling import scaling_failures
    from .setups import bundle_infos
    from .torch_reference import ReferenceMismatchError

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        images = find_images(args.images, args.limit)
        bundles = bundle_infos(args.bundle)
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        setups = plan_setups(bundles, backends, args.checkpoint)
        if args.sizes:
            _plan_scaling(args, setups, images)
        machine = machine_facts(args.threads)
        say(f"{len(images)} images, {len(setups)} setups; machine: {machine['cpu']}, GPU: {machine['gpu']}")
        coders = open_available(setups, bundles, args.threads, say)
        if args.speed_only or args.sizes_only:
            coders.clear()  # opened only to check they run here; the timing is done in subprocesses
    except (ValueError, DcaeError, ReferenceMismatchError) as exc:
        print(f"dcae-bench: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files_dir = Path(args.files) if args.files else out / "files"
    peaks: list[dict] = []
    inductor_cache = Path(args.inductor_cache) if args.inductor_cache else files_dir / "measure" / "inductor_cache"
    if not args.inductor_cache:
        shutil.rmtree(inductor_cache, ignore_errors=True)
    speeds, speed_errors = {}, {}
    try:
        if not args.no_speed and not args.sizes_only:
            speeds, speed_errors = measure_speed(setups, images, args.repeats, args.threads, files_dir / "measure",
                                                 say, rounds=args.rounds, peaks=peaks, inductor_cache=inductor_cache)
    finally:
        if not args.inductor_cache:
            shutil.rmtree(inductor_cache, ignore_errors=True)

    available = [s for s in setups if s.available]
    notes = list(args.note)
    passed = None
    if not args.speed_only and not args.sizes_only and available:
        if args.qualities:
            notes += [f"{s.name} writes the reference rate only ({_reference_rate_only(s)}): it codes quality 50 "
                      f"alone{'' if DEFAULT_QUALITY in args.qualities else ', not among --qualities'}, and "
                      f"decodes the other setups' files at every quality"
                      for s in available if not getattr(coders[s.name], "codes_qualities", True)]
        passed = coding_pass(available, coders, images, files_dir, matrix=not args.no_matrix,
                             matrix_images=args.matrix_images, pixel_images=args.matrix_pixels,
                             with_jpeg=not args.no_jpeg, progress=say, qualities=args.qualities)
    coders.clear()
    scaling = None
    if args.sizes:
        from .scaling import measure_scaling

        scaling = measure_scaling(setups, images, args.sizes, args.threads, args.memory_limit,
                                  args.size_memory_cap, files_dir / "scaling", say)

    headline = passed["headline_quality"] if passed else None
    setup_dicts = []
    for s in setups:
        d = s.to_dict()
        d.update(speed=speeds.get(s.name), speed_error=speed_errors.get(s.name), rd=None)
        if passed and s.name in passed["rd"]:
            rows = passed["rd"][s.name]
            # the speed is measured at the reference rate: its times go beside those rows only
            per_image = (d["speed"] or {}).get("per_image_ms", {}) if headline in (None, DEFAULT_QUALITY) else {}
            for row in rows:  # CompressAI's eval_model reports seconds
                times = per_image.get(row["image"])
                row["encoding_time"] = times["encode"] / 1e3 if times else None
                row["decoding_time"] = times["decode"] / 1e3 if times else None
            d["rd"] = {"images": rows, "mean": rd_mean(rows)}
        if passed and passed.get("rd_by_quality"):
            d["rd_by_quality"] = [{**entry, "mean": rd_mean(entry["images"])}
                                  for entry in passed["rd_by_quality"].get(s.name, [])]
        setup_dicts.append(d)
    _speedups(setup_dicts)
    curves = None
    if passed and args.qualities:
        curves = setup_curves(setup_dicts, args.qualities, args.codecs, images, say)

    machine["load_average_end"] = load_average()
    matrix = None
    if passed and not args.no_matrix:
        matrix = {"setups": [s.name for s in available], "qualities": passed["qualities"],
                  "cells": passed["cells"], "portable": passed["portable"],
                  "images": passed["matrix_images"], "of_images": len(images),
                  "pixel_images": passed["pixel_images"], "decodes_run": passed["decodes_run"],
                  "decodes_counted": passed["decodes_counted"]}
    report = {
        "format": "dcae-bench-report", "version": 1,
        "command": "dcae-bench " + " ".join(args.argv), "created": started,
        "machine": machine,
        "options": {"images_dir": str(args.images), "images": [p.name for p in images], "repeats": args.repeats,
                    "rounds": args.rounds, "threads": args.threads, "limit": args.limit,
                    "matrix_images": args.matrix_images, "matrix_pixels": args.matrix_pixels,
                    "qualities": args.qualities, "headline_quality": headline,
                    "codecs": args.codecs if args.qualities else None,
                    "no_speed": args.no_speed, "backends": backends,
                    "checkpoint": args.checkpoint, "speed_only": args.speed_only, "files": str(files_dir),
                    "inductor_cache": args.inductor_cache, "sizes": args.sizes, "sizes_only": args.sizes_only,
                    "size_memory_cap": {k or "*": v for k, v in args.size_memory_cap.items()} or None,
                    "memory_limit": args.memory_limit},
        "bundles": [b.__dict__ for b in bundles],
        "setups": setup_dicts,
        "not_available": [{"setup": s.name, "reason": s.reason} for s in setups if not s.available],
        "measurement_failed": [{"setup": name, "reason": reason} for name, reason in speed_errors.items()],
        "notes": notes,
        "memory_method": next((s["memory"]["method"] for s in speeds.values()), None),
        "matrix": matrix,
        "silent_wrong": silent_wrong_totals(passed["cells"]) if matrix else None,
        "symbol_differences": passed["symbol_differences"] if passed else None,
        "roofline": roofline(setup_dicts, bundles, images, best_peaks(peaks)),
        "rd_curves": curves,
        "scaling": scaling,
    }
    report = relative_paths(report)
    write_report_files(report, out)  # adds report["plots"]
    (out / "report.json").write_text(json.dumps(report, indent=1))
    say(f"report written to {out / 'report.md'}")
    totals = report["silent_wrong"] or {}
    if totals.get("checked"):
        print(f"dcae-bench: FAILURE: decoders with an end-of-stream check decoded {totals['checked']} file(s) "
              f"wrongly without an error; see {out / 'report.md'}", file=sys.stderr)
        return EXIT_SILENT_WRONG
    if totals.get("unchecked"):
        say(f"note: the PyTorch reference decoded {totals['unchecked']} upstream .bin file(s) wrongly without an "
            f"error (compressai has no desync check); see the matrix")
    portable = portable_totals(matrix) if matrix else None
    status = 0
    if portable and portable["failed"]:
        print(f"dcae-bench: FAILURE: portable files failed to decode in {portable['failed']} of "
              f"{portable['decodes']} decodes between setups that write them; see {out / 'report.md'}",
              file=sys.stderr)
        status = EXIT_PORTABLE_FAILED
    failures = scaling_failures(scaling)
    if failures:
        print(f"dcae-bench: FAILURE: scaling: {'; '.join(failures)}; see {out / 'report.md'}", file=sys.stderr)
        status = status or EXIT_MEASUREMENT_FAILED
    if speed_errors:
        print(f"dcae-bench: FAILURE: could not measure the speed of {', '.join(speed_errors)}; "
              f"see {out / 'report.md'}", file=sys.stderr)
        status = status or EXIT_MEASUREMENT_FAILED
    return status


def _check_scaling_options(args) -> str | None:
    """Parse --sizes, --size-memory-cap and --memory-limit in place; the usage error, if any."""
    from dcae_deploy.runtime.errors import BadInputError
    from dcae_deploy.runtime.memory import parse_size

    from .scaling import parse_sizes

    if args.sizes_only and args.sizes is None:
        return "--sizes-only needs --sizes"
    try:
        if args.sizes is not None:
            args.sizes = parse_sizes(args.sizes)
    except argparse.ArgumentTypeError as exc:
        return f"--sizes: {exc}"
    caps = {}
    for text in args.size_memory_cap:
        name, _, size = text.rpartition("=")
        try:
            caps[name or None] = parse_size(size)
        except BadInputError as exc:
            return f"--size-memory-cap: {exc}"
    args.size_memory_cap = caps
    if args.memory_limit is not None:
        try:
            parse_size(args.memory_limit)
        except BadInputError as exc:
            return f"--memory-limit: {exc}"
    return None


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    for option in ("repeats", "rounds", "matrix_images", "matrix_pixels"):
        value = getattr(args, option)
        if value is not None and value < 1:
            print(f"dcae-bench: error: --{option.replace('_', '-')} must be at least 1", file=sys.stderr)
            return EXIT_USAGE
    from .rd_curves import parse_codecs, parse_qualities

    for option, parse in (("qualities", parse_qualities), ("codecs", parse_codecs)):
        try:
            if getattr(args, option) is not None:
                setattr(args, option, parse(getattr(args, option)))
        except argparse.ArgumentTypeError as exc:
            print(f"dcae-bench: error: --{option}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    error = _check_scaling_options(args)
    if error:
        print(f"dcae-bench: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    return run(args, say)


if __name__ == "__main__":
    sys.exit(main())
