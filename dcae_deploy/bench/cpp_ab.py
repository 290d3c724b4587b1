"""The C++ host against the Python runtime on the same OpenVINO backend, A/B
in one process: for each image the two encode and decode in turn, run after
run, so that load drifting on a shared machine falls on both alike (dcae-bench
measures setups one after another, minutes apart).

  python -m dcae_deploy.bench.cpp_ab --bundle B --images DIR [--limit 2] [--runs 8] [--threads 2] [--out DIR]

Prints (and with --out writes to DIR/cpp_ab.md, naming the CPU and the load) per phase the median over all runs of each side and the median of the
per-run ratios (C++ / Python). The C++ side runs through libdcae-host.so
(dcae_deploy/bench/cpp_host.py), as dcae-bench's cpp-openvino setup.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from dcae_deploy.runtime.codec import Codec
from dcae_deploy.runtime.imaging import load_image

from .records import find_images
from .machine import cpu_description, load_average
from .cpp_host import CppHostCoder
from .setups import Setup


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dcae_deploy.bench.cpp_ab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--limit", type=int, default=2)
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="folder for cpp_ab.md")
    args = p.parse_args(argv)
    load_before = load_average()
    python = Codec(args.bundle, backend="openvino", threads=args.threads)
    cpp = CppHostCoder(Setup("cpp-openvino", "runtime", "cpp-openvino", "fp32", bundle_path=args.bundle),
                       args.threads)
    times = {(side, phase): [] for side in ("python", "cpp") for phase in ("encode", "decode")}
    for path in find_images(args.images, args.limit):
        pixels = load_image(path)
        data = python.compress(pixels)
        assert cpp.encode(pixels).data == data  # the same arithmetic, so the same file
        python.decompress(data), cpp.decompress(data)  # warm-up: compiles for this size
        for _ in range(args.runs):
            for side, encode, decode in (("python", python.compress, python.decompress),
                                         ("cpp", lambda x: cpp.encode(x).data, cpp.decompress)):
                start = time.perf_counter()
                encode(pixels)
                middle = time.perf_counter()
                decode(data)
                times[side, "encode"].append(middle - start)
                times[side, "decode"].append(time.perf_counter() - middle)
    lines = []
    for phase in ("encode", "decode"):
        py, cc = np.array(times["python", phase]), np.array(times["cpp", phase])
        lines.append(f"{phase}: Python {1e3 * np.median(py):.1f} ms, C++ {1e3 * np.median(cc):.1f} ms, "
                     f"C++/Python per run: median {np.median(cc / py):.3f} [p25 {np.percentile(cc / py, 25):.3f}, "
                     f"p75 {np.percentile(cc / py, 75):.3f}] over {py.size} runs")
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        command = "python -m dcae_deploy.bench.cpp_ab " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        (args.out / "cpp_ab.md").write_text(
            "# C++ host against the Python runtime, both on OpenVINO (f32)\n\n"
            f"Command: `{command}`\n\n"
            f"CPU: {cpu_description()}; {args.threads} threads; load average (1, 5, 15 min) "
            f"at start {load_before}, at end {load_average()}\n\n"
            "Each run encodes then decodes one image with each side in turn (same bundle, same files: "
            "the C++ host through libdcae-host.so); ratio < 1: the C++ host is faster.\n\n"
            + "".join(f"- {line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
