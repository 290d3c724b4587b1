"""Scaling: encode and decode time and peak memory as the image grows, each
in a fresh process. `dcae-bench --sizes` and `python -m dcae_deploy.bench.big_images`
both measure with this module.

Each size is a mosaic of the images (`tiling_halo.mosaic`): `dcae-bench
--sizes 0.4,3,12` asks for megapixels, made with the images' aspect ratio
(the mosaic cell's, landscape) and rounded to even dimensions (0.4 MP of
768x512 photos: 774x516). Each setup codes it in one process and decodes the
file in another, run by `run_process`: wall time from start to exit (imports
and the bundle's or model's loading included) and the peak resident set size
(`ru_maxrss` of the process, from `wait4`). The commands are the ones a user
runs:

- a runtime setup: `dcae compress IN -o OUT -b BUNDLE --backend NAME [--threads T] [--memory-limit SIZE]`,
  then `dcae decompress`;
- the C++ host (`cpp-openvino`): `dcae-host compress` / `decompress`, from the
  folder that holds libdcae-host.so (`cpp_host.library_path`);
- the PyTorch reference (`torch`, `torch-avx2`, ...): `python -m
  dcae_deploy.bench.scaling compress|decompress`, this module's `main`, which
  codes with the same coder dcae-bench times (`torch_coder.TorchCoder`), with
  the setup's kernel environment set at process start.

A process on the CPU runs under an address-space limit (RLIMIT_AS, the cap),
so a size that needs more memory than the cap fails in that process, not on
the machine: an exit that says so (MemoryError, "out of memory", bad_alloc, a
mapping refused, ...) or a death by a signal is reported as "out of memory
at N MP" and the setup's larger sizes are not tried. The address space is
more than the RSS (libraries and allocator arenas: about 4 GB for a process
that imports torch with CUDA), so the cap bounds the RSS from above. A GPU
setup runs without it (CUDA reserves far more address space than it uses).
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from dcae_deploy import IMPORT_ROOT

# What a process that ran out of memory says on stderr (lower case): Python's
# MemoryError, numpy's "Unable to allocate", the runtime's and the host's
# "out of memory", torch's "can't allocate memory", C++'s bad_alloc, errno
# ENOMEM, and the loader's refusal to map a library under the cap.
MEMORY_WORDS = ("memoryerror", "out of memory", "unable to allocate", "can't allocate memory",
                "cannot allocate memory", "failed to allocate", "bad_alloc", "failed to map segment", "enomem",
                "memory allocation failed")
GPU_BACKENDS = ("torch-cuda", "onnxruntime-cuda", "onnxruntime-trt", "tensorrt")
CAP_SHARE = 0.8  # the default cap: this share of the memory available at the start


# ---- sizes -------------------------------------------------------------------------------------

def parse_sizes(text: str) -> list[float]:
    """'0.4,3,12' -> megapixels, each a number over 0 whose image stays within
    the format's MAX_PIXELS (argparse.ArgumentTypeError otherwise)."""
    from dcae_deploy.runtime.geometry import MAX_PIXELS

    sizes = []
    for part in str(text).split(","):
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected megapixels such as 0.4,3,12, got {part.strip()!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"a size must be a number of megapixels over 0, got {part.strip()!r}")
        if value * 1e6 > MAX_PIXELS:
            raise argparse.ArgumentTypeError(f"{part.strip()} MP is over the format's limit of "
                                             f"{MAX_PIXELS / 1e6:g} MP ({MAX_PIXELS} pixels)")
        sizes.append(value)
    return sorted(set(sizes))


def dimensions(megapixels: float, cell_height: int, cell_width: int) -> tuple[int, int]:
    """(width, height): `megapixels` at the cell's aspect ratio, even."""
    aspect = cell_width / cell_height
    width = 2 * round(math.sqrt(megapixels * 1e6 * aspect) / 2)
    height = 2 * round(width / aspect / 2)
    return width, height


def plan_sizes(cells, sizes: list[float]) -> list[dict]:
    """{megapixels asked, width, height, megapixels} per size; ValueError for a
    size too small, over MAX_PIXELS once rounded, or that the images do not cover."""
    from dcae_deploy.runtime.geometry import MAX_PIXELS

    from .tiling_halo import MOSAIC_ROUNDS, mosaic_covers

    ch, cw = cells[0].shape[:2]
    planned = []
    for asked in sizes:
        width, height = dimensions(asked, ch, cw)
        if width < 2 or height < 2:
            raise ValueError(f"--sizes: {asked:g} MP is too small for an image")
        if width * height > MAX_PIXELS:
            raise ValueError(f"--sizes: {asked:g} MP ({width}x{height}) is over the format's limit of "
                             f"{MAX_PIXELS} pixels")
        if not mosaic_covers(cells, height, width):
            raise ValueError(f"--sizes: {asked:g} MP ({width}x{height}) is more than the {len(cells)} images "
                             f"of {cw}x{ch} cover, each at most {MOSAIC_ROUNDS} times (mirrored): give more "
                             f"images or smaller sizes")
        planned.append({"asked": asked, "width": width, "height": height, "megapixels": width * height / 1e6})
    return planned


def size_label(megapixels: float) -> str:
    return f"{megapixels:.3g} MP"


# ---- a process, timed and capped -----------------------------------------------------------------

@dataclass
class ProcessRun:
    returncode: int
    seconds: float
    peak_bytes: int
    out_of_memory: bool = False
    message: str | None = None  # the one line that says why it failed


# Runs the command as its child and prints "peak-RSS-KiB wait-status seconds". A
# small process of its own, because a child forked from dcae-bench's process
# would count that process's resident pages in its peak (ru_maxrss keeps the
# high-water mark from before exec): this one's few MB are below any coder's.
_WRAPPER = r"""
import os, resource, sys, time
cap = int(sys.argv[1])
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        if cap:
            hard = resource.getrlimit(resource.RLIMIT_AS)[1]
            cap = cap if hard == resource.RLIM_INFINITY else min(cap, hard)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        os.execvp(sys.argv[2], sys.argv[2:])
    except BaseException as exc:
        os.write(2, f"could not start {sys.argv[2]}: {exc}\n".encode())
    os._exit(127)
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, status, time.perf_counter() - start)
"""


def _failure_line(stderr: str) -> str | None:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):  # the line that names the error, not a traceback's last frame
        if any(word in line.lower() for word in MEMORY_WORDS):
            return line[:300]
    return lines[-1][:300] if lines else None


def run_process(command: list[str], env: dict | None = None, cap: int | None = None,
                cwd: str | None = None) -> ProcessRun:
    """Run `command` to its end: wall seconds, peak RSS (bytes) and, if it
    failed, whether it ran out of memory (under `cap` bytes of address space)."""
    with tempfile.TemporaryFile() as err:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", _WRAPPER, str(cap or 0), *command],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env, cwd=cwd,
                              text=True)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    try:
        kib, status, seconds = done.stdout.split()
        returncode = os.waitstatus_to_exitcode(int(status))
    except ValueError:  # the wrapper itself failed
        return ProcessRun(-1, 0.0, 0, False, _failure_line(stderr) or f"exit status {done.returncode}")
    run = ProcessRun(returncode, float(seconds), int(kib) * 1024)
    if returncode == 0:
        return run
    line = _failure_line(stderr)
    if returncode < 0:
        name = signal.Signals(-returncode).name
        # SIGKILL: the kernel's OOM killer; under the cap, an allocation that
        # failed unchecked ends in SIGSEGV or SIGABRT
        run.out_of_memory = name == "SIGKILL" or cap is not None
        run.message = f"killed by {name}" + (f": {line}" if line else "")
    else:
        run.out_of_memory = bool(line) and any(word in line.lower() for word in MEMORY_WORDS)
        run.message = line or f"exit status {returncode}"
    return run


# ---- what each setup runs ------------------------------------------------------------------------

@dataclass
class Commands:
    """A setup's compress and decompress commands; "{in}" and "{out}" stand for the paths."""
    compress: list[str]
    decompress: list[str]
    env: dict = field(default_factory=dict)
    cwd: str | None = None
    gpu: bool = False

    @classmethod
    def of(cls, program: list[str], options: list[str], **kwargs) -> "Commands":
        """`program compress {in} -o {out} options...` and the same with decompress."""
        return cls(*([*program, which, "{in}", "-o", "{out}", *options] for which in ("compress", "decompress")),
                   **kwargs)

    def argv(self, which: str, source: Path, target: Path) -> list[str]:
        return [str(source) if a == "{in}" else str(target) if a == "{out}" else a for a in getattr(self, which)]

    def shown(self, which: str) -> str:
        """The command as a reader types it (the programs by name)."""
        argv = getattr(self, which)
        head = ["python"] if argv[0] == sys.executable else [Path(argv[0]).name]
        names = {"{in}": "IN.png", "{out}": "OUT.dcae"} if which == "compress" else \
            {"{in}": "IN.dcae", "{out}": "OUT.png"}
        return shlex.join(head + [names.get(a, a) for a in argv[1:]])


def runtime_commands(bundle: str | None, backend: str | None, threads: int | None,
                     memory_limit: str | None) -> Commands:
    dcae = str(Path(sys.executable).parent / "dcae")
    options = (["-b", str(bundle)] if bundle else []) + (["--backend", backend] if backend else []) + (
        ["--threads", str(threads)] if threads else []) + (["--memory-limit", memory_limit] if memory_limit else [])
    return Commands.of([dcae], options, gpu=backend in GPU_BACKENDS)


def setup_commands(setup, threads: int | None, memory_limit: str | None) -> Commands | str:
    """The setup's commands, or why it cannot run in a fresh process."""
    from dcae_deploy.runtime.backends import backend_names

    from .cpp_host import CPP_BACKENDS, library_path
    from .setup_types import SETUP_ENV, TORCH, TORCH_DEVICES

    if setup.kind == TORCH:
        env = {**os.environ, **SETUP_ENV.get(setup.backend, {})}
        env["PYTHONPATH"] = str(IMPORT_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        options = ["--backend", setup.backend] + (["--checkpoint", str(setup.checkpoint)] if setup.checkpoint else []) \
            + (["--threads", str(threads)] if threads else [])
        return Commands.of([sys.executable, "-m", "dcae_deploy.bench.scaling"], options, env=env,
                           cwd=str(IMPORT_ROOT), gpu=TORCH_DEVICES[setup.backend] != "cpu")
    if setup.backend in CPP_BACKENDS:
        host = library_path().parent / "dcae-host"
        if not host.is_file():
            return (f"the C++ host's program is not built ({host} is missing): cmake -S hosts/cpp -B build/cpp && "
                    f"cmake --build build/cpp (DCAE_CPP_BUILD names another build folder)")
        options = ["-b", str(setup.bundle_path), "--backend", CPP_BACKENDS[setup.backend]] + (
            ["--threads", str(threads)] if threads else []) + (["--memory-limit", memory_limit] if memory_limit else [])
        return Commands.of([str(host)], options)
    if setup.backend not in backend_names():
        return f"`dcae compress` has no backend {setup.backend!r}"
    return runtime_commands(setup.bundle_path, setup.backend, threads, memory_limit)


# ---- measuring ---------------------------------------------------------------------------------

def code_size(commands: Commands, source: Path, pixels, work: Path, cap: int | None) -> dict:
    """One size through one setup: its row (see `measure_scaling`)."""
    from dcae_deploy.runtime.imaging import load_image
    from dcae_deploy.runtime.metrics import psnr

    coded, decoded = work / "coded.dcae", work / "decoded.png"
    cap = None if commands.gpu else cap
    env = commands.env or None
    row: dict = {"outcome": "ok"}
    try:
        for stage, source_path, target in (("encode", source, coded), ("decode", coded, decoded)):
            which = "compress" if stage == "encode" else "decompress"
            run = run_process(commands.argv(which, source_path, target), env, cap, commands.cwd)
            row[f"{stage}_s"], row[f"{stage}_peak"] = run.seconds, run.peak_bytes
            if run.returncode != 0 or not target.is_file():
                row.update(outcome="out of memory" if run.out_of_memory else "failed", stage=stage,
                           reason=run.message or f"{target.name} was not written")
                return row
        height, width = pixels.shape[:2]
        back = load_image(decoded)
        row["bpp"] = 8 * coded.stat().st_size / (height * width)
        row["psnr"] = float(psnr(pixels, back)) if back.shape == pixels.shape else None
        return row
    finally:
        for path in (coded, decoded):
            path.unlink(missing_ok=True)


def default_cap() -> int | None:
    from dcae_deploy.runtime.memory import available_memory

    available = available_memory()
    return int(CAP_SHARE * available) if available else None


def measure_scaling(setups, images: list[Path], sizes: list[float], threads: int | None, memory_limit: str | None,
                    caps: dict, work: Path, say=print) -> dict:
    """The Scaling section: per setup a row per size. `caps`: {setup name or
    None (every other setup): address-space cap in bytes}. A row is
    {asked, width, height, megapixels, outcome ("ok", "out of memory",
    "failed", "not tried"), encode_s, encode_peak, decode_s, decode_peak
    (bytes), bpp, psnr; for a failure the stage and the reason}."""
    from dcae_deploy.runtime.imaging import save_image

    from .tiling_halo import mosaic, mosaic_cells

    cells = mosaic_cells(images)
    planned = plan_sizes(cells, sizes)
    runs, not_run = [], []
    for setup in setups:
        if not setup.available:
            continue
        commands = setup_commands(setup, threads, memory_limit)
        if isinstance(commands, str):
            not_run.append({"setup": setup.name, "reason": commands})
            say(f"{setup.name}: scaling not measured: {commands}")
            continue
        cap = None if commands.gpu else caps.get(setup.name, caps.get(None))
        runs.append((setup, commands, {"setup": setup.name, "compress": commands.shown("compress"),
                                       "decompress": commands.shown("decompress"), "cap": cap, "rows": []}))
    work.mkdir(parents=True, exist_ok=True)
    source = work / "mosaic.png"
    for size in planned:
        pixels = None
        for setup, commands, entry in runs:
            row = dict(size)
            stopped = next((r for r in entry["rows"] if r["outcome"] != "ok" and r["outcome"] != "not tried"), None)
            if stopped:
                row.update(outcome="not tried", reason=f"{stopped['outcome']} at {size_label(stopped['megapixels'])}")
                entry["rows"].append(row)
                continue
            if pixels is None:
                pixels = mosaic(images, size["height"], size["width"], cells)
                save_image(pixels, source)
            row.update(code_size(commands, source, pixels, work, entry["cap"]))
            entry["rows"].append(row)
            where = f"{size['width']}x{size['height']} ({size_label(size['megapixels'])})"
            if row["outcome"] == "ok":
                say(f"{setup.name} {where}: encode {row['encode_s']:.1f} s, {row['encode_peak'] / 2**20:.0f} MiB; "
                    f"decode {row['decode_s']:.1f} s, {row['decode_peak'] / 2**20:.0f} MiB")
            else:
                say(f"{setup.name} {where}: {row['outcome']} ({row['stage']}): {row['reason']}")
        source.unlink(missing_ok=True)
        del pixels
    return {"sizes": planned, "threads": threads, "memory_limit": memory_limit,
            "cap": caps.get(None), "setups": [entry for _, _, entry in runs], "not_run": not_run}


def scaling_failures(section: dict | None) -> list[str]:
    """'setup: failed at N MP (stage): reason' for every failure that is not out of memory."""
    return [f"{entry['setup']}: failed at {size_label(row['megapixels'])} ({row['stage']}): {row['reason']}"
            for entry in (section or {}).get("setups", []) for row in entry["rows"] if row["outcome"] == "failed"]


# ---- the PyTorch reference's processes ----------------------------------------------------------

def main(argv=None) -> int:
    """`python -m dcae_deploy.bench.scaling compress IN -o OUT --backend torch [--checkpoint C] [--threads T]`
    (or decompress): one image through a PyTorch reference setup, in this process."""
    import warnings

    parser = argparse.ArgumentParser(prog="python -m dcae_deploy.bench.scaling", description=main.__doc__)
    parser.add_argument("command", choices=("compress", "decompress"))
    parser.add_argument("input", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--backend", default="torch", help="the reference setup: torch, torch-avx2, torch-cuda, ...")
    parser.add_argument("--checkpoint", default=None, help="default: the embedded model")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    from dcae_deploy.runtime.fileio import write_atomically
    from dcae_deploy.runtime.imaging import load_image, save_image

    from .setup_types import TORCH, Setup
    from .setups import open_setup

    coder = open_setup(Setup(args.backend, TORCH, args.backend, "fp32", checkpoint=args.checkpoint), args.threads)
    if args.command == "compress":
        write_atomically(args.output, coder.encode(load_image(args.input)).data)
    else:
        save_image(coder.decompress(args.input.read_bytes()), args.output)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MemoryError:
        print("scaling: error: out of memory (MemoryError)", file=sys.stderr)
        sys.exit(1)
