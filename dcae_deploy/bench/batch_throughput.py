"""Images per second: the single-process `dcae` CLI against `dcae batch` on Ray.

    python -m dcae_deploy.bench.batch_throughput --images tests/data/kodak

Runs, in one go and on this machine, each as the real command in a fresh
process (so each pays what a user pays: interpreter start, bundle load, and
for `dcae batch` starting a local Ray and its actors):

    dcae compress IMAGES -o OUT                       (threads: the CLI's default, one per core)
    dcae batch compress IMAGES -o OUT --workers W --threads T   (for each WxT in --shapes)

and the same for decompress (of the sequential run's .dcae files). Every
batch output is compared with the sequential one, byte for byte. Writes a
Markdown table (command, CPU, load, versions) to --out.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dcae_deploy.bench.machine import cpu_description, load_average


def _run(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"batch_throughput: {shlex.join(command)} failed ({done.returncode}): "
                         f"{done.stderr.strip().splitlines()[-1:]}")
    return wall, done.stdout + done.stderr


def _same_files(a: Path, b: Path, suffix: str) -> bool:
    names = sorted(p.name for p in a.glob(f"*{suffix}"))
    if names != sorted(p.name for p in b.glob(f"*{suffix}")):
        return False
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, type=Path, help="a folder of images (e.g. the 24 Kodak images)")
    parser.add_argument("-b", "--bundle", help="bundle directory (default: the default model's bundle)")
    parser.add_argument("--shapes", default="1x1,2x1,1x2",
                        help="batch runs as WORKERSxTHREADS, comma-separated (default: 1x1,2x1,1x2)")
    parser.add_argument("--modes", default="compress,decompress", help="compress, decompress or both")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/batch_throughput.md"))
    args = parser.parse_args(argv)

    from dcae_deploy.runtime.default_bundle import ensure_default_bundle
    from dcae_deploy.runtime.inputs import IMAGE_SUFFIXES

    bundle = os.path.abspath(args.bundle) if args.bundle else str(ensure_default_bundle())
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    count = len(images)
    shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes.split(",")]
    modes = args.modes.split(",")
    dcae = [sys.executable, "-m", "dcae_deploy.runtime.cli"]
    cpus = os.cpu_count()
    load_before = load_average()
    rows = []
    with tempfile.TemporaryDirectory(prefix="batch_throughput.") as work:
        work = Path(work)
        for mode in modes:
            source = args.images if mode == "compress" else work / "compress-sequential"
            suffix = ".dcae" if mode == "compress" else ".png"
            sequential = work / f"{mode}-sequential"
            wall, _ = _run(dcae + [mode, str(source), "-o", str(sequential), "-b", bundle])
            rows.append((mode, "`dcae " + mode + "` (one process)", f"1 x {cpus} (default)", wall, None, "-"))
            print(f"{mode} sequential: {wall:.1f} s", file=sys.stderr)
            for workers, threads in shapes:
                out = work / f"{mode}-batch{workers}x{threads}"
                wall, log = _run(dcae + ["batch", mode, str(source), "-o", str(out), "-b", bundle,
                                         "--workers", str(workers), "--threads", str(threads),
                                         "--cpus", str(cpus)])
                match = re.search(r"\(Ray start ([0-9.]+) s\)", log)
                ray_start = float(match.group(1)) if match else None
                lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
                ok = sum(x["status"] == "ok" for x in lines)
                if ok != count:
                    raise SystemExit(f"batch_throughput: batch {mode} coded {ok} of {count} inputs")
                same = "yes" if _same_files(sequential, out, suffix) else "**NO**"
                rows.append((mode, f"`dcae batch {mode} --workers {workers} --threads {threads}`",
                             f"{workers} x {threads}", wall, ray_start, same))
                print(f"{mode} batch {workers}x{threads}: {wall:.1f} s (Ray start {ray_start})", file=sys.stderr)
    load_after = load_average()

    from ray import __version__ as ray_version

    command = "python -m dcae_deploy.bench.batch_throughput " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    text = [
        "# Dataset coding: single-process CLI against `dcae batch` (Ray)",
        "",
        f"Command: `{command}` (run under `nice -n 10`), bundle: the embedded default model, fp32, onnxruntime CPU.",
        "",
        f"Machine: {cpu_description()}, shared with a training job and other work: load average "
        f"{load_before} before, {load_after} after. Ray {ray_version}, local instance with {cpus} CPUs.",
        "",
        f"{count} images ({args.images.name}). Each row is the real command in a fresh process, timed from "
        "start to exit: interpreter start, bundle load, and for `dcae batch` starting a local Ray and its "
        "actors (each loads the bundle). Outputs of every batch run are compared byte for byte with the "
        "single-process run's.",
        "",
        "| mode | command | workers x threads | wall (s) | images/s | of which Ray start (s) | images/s after Ray start | same bytes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, name, shape, wall, ray_start, same in rows:
        after = f"{count / (wall - ray_start):.2f}" if ray_start is not None else "-"
        text.append(f"| {mode} | {name} | {shape} | {wall:.1f} | {count / wall:.2f} | "
                    f"{'-' if ray_start is None else f'{ray_start:.1f}'} | {after} | {same} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
