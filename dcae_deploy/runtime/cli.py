"""`dcae`: compress images to `.dcae` files, decompress them, inspect them.

Every failure a user can cause is one line on stderr, `dcae: error: ...`,
and exit status 1 (2 for a command-line mistake, 130 for Ctrl-C); never a
traceback. Outputs are written atomically, so a failure never leaves a
half-written file. With several inputs the command goes on past a failing
file, reports each failure, and exits 1 at the end.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

from .container import gain_of
from .errors import BadInputError, DcaeError
from .fileio import absolute_path
from .filejobs import one_line as _one_line, os_error_message as _os_error_message
from .inputs import CODED_SUFFIXES, IMAGE_SUFFIXES, UsageError as _UsageError
from .inputs import expand_inputs as _expand_inputs, plan_outputs as _plan_outputs
from .portable import DEFAULT_MARGIN, MAX_MARGIN, MODEL_MARGIN, check_margin

DESCRIPTION = """\
Learned image compression with DCAE, running an exported bundle (ONNX graphs
and entropy tables) on onnxruntime; no PyTorch needed.

  dcae compress photo.png -o photo.dcae
  dcae compress photos/ 'more/*.jpg' -o coded/          one .dcae per image
  dcae decompress coded/ -o decoded/                    one .png per file
  dcae inspect photo.dcae --json
  dcae batch compress photos/ -o coded/                 in parallel on Ray (docs/batch.md)

Without -b, the default model's bundle is used; it is exported once, on first
use, into $DCAE_CACHE (default ~/.cache/dcae-deploy), which needs the
reference extra (pip install dcae-deploy[reference]).
"""


def _margin(text: str) -> float | str:
    if text == MODEL_MARGIN:  # argparse passes a string default through the type too
        return MODEL_MARGIN
    try:
        return check_margin(float(text))
    except (ValueError, BadInputError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _memory_size(text: str) -> int:
    from .memory import parse_size

    try:
        return parse_size(text)
    except BadInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _quality(text: str) -> float:
    from .quality import check_quality

    try:
        return check_quality(text)
    except BadInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _target_bpp(text: str) -> float:
    from .quality import RateChoice

    try:
        return RateChoice(target_bpp=text).target_bpp
    except BadInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_rate_options(parser: argparse.ArgumentParser) -> None:
    from .quality import DEFAULT_QUALITY, TARGET_TOLERANCE

    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--quality", "-q", type=_quality, metavar="Q",
                      help=f"quality from 0 to 100, higher is better (default {DEFAULT_QUALITY}: the model's "
                           f"reference rate)")
    rate.add_argument("--target-bpp", type=_target_bpp, metavar="B",
                      help=f"the largest file of at most B bits per pixel, and within {100 * TARGET_TOLERANCE:.0f} "
                           f"%% of it; the image transforms run once, the entropy path once per try")
    rate.add_argument("--max-bytes", type=_positive_int, metavar="N",
                      help="the largest file of at most N bytes (never over); an image that cannot be "
                           "coded that small is an error naming the smallest size it can reach")


def _rate_choice(args):
    from .quality import RateChoice

    return RateChoice(args.quality, args.max_bytes, args.target_bpp)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# ---- inputs and outputs: dcae_deploy.runtime.inputs -----------------------------------------------------

def _open_codec(args):
    from .codec import Codec
    from .default_bundle import ensure_default_bundle

    bundle = args.bundle
    if bundle is None:
        bundle = ensure_default_bundle(announce=lambda m: print(f"dcae: {m}", file=sys.stderr))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        codec = Codec(bundle, backend=args.backend, threads=args.threads, memory_limit=args.memory_limit)
    for warning in caught:
        print(f"dcae: warning: {_one_line(warning.message)}", file=sys.stderr)
    # A bar over the tiles of a big image, on a terminal only.
    codec.transforms.progress = sys.stderr.isatty()
    return codec


def _for_each(pairs, work) -> int:
    """Run `work(source, target)` on each pair, with a progress bar when there
    are several; report failures one line each and go on. Exit status."""
    from tqdm import tqdm

    failures = 0
    # The bar only on a terminal: in a log it would be noise between the lines.
    show_bar = len(pairs) > 1 and sys.stderr.isatty()
    with tqdm(total=len(pairs), file=sys.stderr, unit="file", disable=not show_bar, leave=False) as bar:
        for source, target in pairs:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    line = work(source, target)
                except DcaeError as exc:
                    failures += 1
                    message = f"dcae: error: {source}: {_one_line(exc)}"
                except OSError as exc:
                    failures += 1
                    message = f"dcae: error: {source}: {_os_error_message(exc)}"
                else:
                    message = None
            for warning in caught:
                tqdm.write(f"dcae: warning: {source}: {_one_line(warning.message)}", file=sys.stderr)
            if message is None:
                tqdm.write(line, file=sys.stdout)
            else:
                tqdm.write(message, file=sys.stderr)
            bar.update()
    return 1 if failures else 0


# ---- commands --------------------------------------------------------------------------

def _compress(args) -> int:
    from .filejobs import compress_file

    inputs, single = _expand_inputs(args.inputs, IMAGE_SUFFIXES, "image")
    targets = _plan_outputs(inputs, single, args.output, ".dcae")
    codec = _open_codec(args)

    rate = _rate_choice(args)

    def work(source: Path, target: Path) -> str:
        result = compress_file(codec, source, target, None if args.not_portable else args.margin, rate)
        bpp = 8 * len(result.data) / (result.height * result.width)
        line = f"{source} -> {target}: {len(result.data)} bytes, {bpp:.4f} bpp"
        if codec.last_rate_search is not None:
            line += f" (gain {gain_of(codec.last_rate_search.gain_code):g}, {len(codec.last_rate_search.tries)} tries)"
        return line

    return _for_each(list(zip(inputs, targets)), work)


def _decompress(args) -> int:
    from .filejobs import decompress_file

    inputs, single = _expand_inputs(args.inputs, CODED_SUFFIXES, ".dcae or .bin")
    targets = _plan_outputs(inputs, single, args.output, ".png")
    codec = _open_codec(args)

    def work(source: Path, target: Path) -> str:
        pixels = decompress_file(codec, source, target, force=args.force)
        return f"{source} -> {target}: {pixels.shape[0]}x{pixels.shape[1]}"

    return _for_each(list(zip(inputs, targets)), work)


def _batch(args) -> int:
    """`dcae batch compress|decompress`: the inputs mapped over Ray actors."""
    from .batch import import_ray, print_progress_factory, run_batch
    from .default_bundle import ensure_default_bundle

    import_ray()  # without Ray, say how to install it before anything else
    if not args.inputs and not args.files_from:
        raise _UsageError("no inputs: name files, directories or globs, or --files-from LIST")
    if args.address is not None and args.cpus is not None:
        raise _UsageError("--cpus sizes the local Ray instance; with --address the cluster's CPUs are used")
    bundle = args.bundle
    if bundle is None:
        bundle = str(ensure_default_bundle(announce=lambda m: print(f"dcae: {m}", file=sys.stderr)))
    summary = run_batch(
        args.batch_command, args.inputs, args.output, files_from=args.files_from or (), bundle=bundle,
        backend=args.backend, threads=args.threads, workers=args.workers,
        margin=None if getattr(args, "not_portable", False) else getattr(args, "margin", MODEL_MARGIN),
        force=getattr(args, "force", False), redo=args.redo, results=args.results, address=args.address,
        num_cpus=args.cpus, worker_memory=args.worker_memory and int(args.worker_memory * 2**30),
        memory_limit=args.memory_limit, rate=_rate_choice(args) if args.batch_command == "compress" else None,
        progress=print_progress_factory(sys.stderr))
    for line in summary.lines():
        print(f"dcae: {line}")
    return summary.exit_status


def _demo(args) -> int:
    """The main job on the embedded default: export (first use), compress, decompress."""
    import time

    from .fileio import write_atomically
    from .imaging import load_image, save_image
    from .metrics import bpp, psnr

    samples = sorted((Path(__file__).parent / "samples").glob("*.png"))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    codec = _open_codec(args)
    print(f"bundle: {codec.bundle.path}")
    for sample in samples:
        pixels = load_image(sample)
        t0 = time.perf_counter()
        data = codec.compress(pixels)
        t1 = time.perf_counter()
        decoded = codec.decompress(data)
        t2 = time.perf_counter()
        write_atomically(out / f"{sample.stem}.dcae", data)
        save_image(decoded, out / f"{sample.stem}.png")
        h, w = pixels.shape[:2]
        print(f"{sample.name}: {w}x{h}, {len(data)} bytes, {bpp(len(data), h, w):.3f} bpp, "
              f"PSNR {psnr(pixels, decoded):.2f} dB, encode {t1 - t0:.2f} s, decode {t2 - t1:.2f} s "
              f"-> {out / (sample.stem + '.dcae')}, {out / (sample.stem + '.png')}")
    return 0


def describe(data: bytes) -> dict:
    """The header fields and stream facts of a `.dcae` or upstream `.bin`."""
    from .container import FORMAT_VERSION, sniff, unpack, unpack_bin
    from .geometry import padded_size, z_shape_for
    from .portable import decode_side_stream

    if sniff(data) == "bin":
        parsed = unpack_bin(data)
        height, width, y, z = parsed.height, parsed.width, parsed.y, parsed.z
        info = {"format": "bin", "version": None, "flags": None, "gain_code": None, "gain": None,
                "reduced_precision_entropy": None, "portable": False, "fingerprint": None, "margin": None,
                "side_bytes": 0, "side_marked": 0, "threshold_shifts": None, "shift_block": None}
    else:
        parsed = unpack(data)  # raises with a reason when this is not a sound .dcae
        header = parsed.header
        height, width, y, z = header.height, header.width, parsed.y, parsed.z
        side = None
        if header.portable:
            # The y latent's element count depends on the model, which inspect
            # does not load: the side stream is checked on its own terms.
            side = decode_side_stream(parsed.side, None)
        info = {"format": "dcae", "version": FORMAT_VERSION, "flags": header.flags,
                "gain_code": header.gain_code, "gain": header.gain,
                "reduced_precision_entropy": header.reduced_precision_entropy, "portable": header.portable,
                "fingerprint": header.fingerprint.hex(), "margin": header.margin,
                "side_bytes": len(parsed.side), "side_marked": side.positions.size if side else 0,
                "threshold_shifts": side.shifts.count if side else None,
                "shift_block": side.shifts.block if side and side.shifts.count > 1 else None}
    (padded_height, padded_width), (z_height, z_width) = padded_size(height, width), z_shape_for(height, width)
    pixels = height * width
    info.update({
        "height": height, "width": width, "padded_height": padded_height, "padded_width": padded_width,
        "z_height": z_height, "z_width": z_width, "file_bytes": len(data), "z_bytes": len(z), "y_bytes": len(y),
        "bpp": 8 * len(data) / pixels, "stream_bpp": 8 * (len(y) + len(z)) / pixels,
        "y_sha256": hashlib.sha256(y).hexdigest(), "z_sha256": hashlib.sha256(z).hexdigest(),
    })
    return info


def _inspect(args) -> int:
    path = Path(args.file)
    info = {"file": str(path), **describe(path.read_bytes())}
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    if info["format"] == "dcae":
        kind = f".dcae version {info['version']}"
        flags = ("reduced-precision entropy path" if info["reduced_precision_entropy"]
                 else f"portable (margin {info['margin']:g})" if info["portable"] else "none")
    else:
        kind, flags = "upstream .bin (no fingerprint, no checksum)", "-"
    rows = [
        ("file", f"{path} ({info['file_bytes']} bytes)"),
        ("format", kind),
        ("flags", flags),
        ("gain", f"{info['gain']:g} (gain_code {info['gain_code']})" if info["gain_code"] is not None else "-"),
        ("image", f"{info['height']}x{info['width']} (padded {info['padded_height']}x{info['padded_width']})"),
        ("z shape", f"{info['z_height']}x{info['z_width']}"),
        ("fingerprint", info["fingerprint"] or "-"),
        ("z stream", f"{info['z_bytes']} bytes, sha256 {info['z_sha256']}"),
        ("y stream", f"{info['y_bytes']} bytes, sha256 {info['y_sha256']}"),
        ("side stream", f"{info['side_bytes']} bytes, {info['side_marked']} elements listed"
                        + (f", {info['threshold_shifts']} threshold shifts per block of {info['shift_block']}"
                           if info["shift_block"] else "")),
        ("bpp", f"{info['bpp']:.4f} (file), {info['stream_bpp']:.4f} (streams)"),
    ]
    for name, value in rows:
        print(f"{name:<12} {value}")
    return 0


# ---- parser and entry point ---------------------------------------------------------------

def _add_codec_options(parser: argparse.ArgumentParser) -> None:
    from .backends import backend_names

    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="output file for one input file; otherwise a directory (created) that "
                             "receives one file per input, named after the input's stem")
    parser.add_argument("-b", "--bundle", metavar="BUNDLE", type=absolute_path,
                        help="bundle directory written by dcae-export (default: the default model's bundle, "
                             "exported on first use)")
    parser.add_argument("--backend", default="onnxruntime", choices=backend_names(),
                        help="what runs the graphs (default: onnxruntime on the CPU). Files of bundles whose "
                             "entropy graphs are fp32 are portable: any backend, CPU or host with a bundle of "
                             "the same model decodes them; others decode only on the setup that wrote them. "
                             "On CPUs with AMX, onnxruntime+openvino-bf16 (the image transforms in OpenVINO "
                             "bf16, onnxruntime's files) is faster at the same quality. onnxruntime-cuda and "
                             "tensorrt have never run on a GPU (tensorrt is tested against a simulated TensorRT "
                             "API only)")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="threads per graph (default: one per CPU core); does not change the bitstream")
    _add_memory_limit(parser)


def _add_memory_limit(parser: argparse.ArgumentParser, default_help: str = "half the memory available") -> None:
    parser.add_argument("--memory-limit", type=_memory_size, metavar="SIZE",
                        help="the process's peak memory, such as 2G: g_a and g_s get what the process does not "
                             "hold already, and an image that needs more runs in tiles that fit (the entropy path "
                             "runs on the whole latent; the file and its decoding stay valid for every "
                             "decoder; tiles move pixels by at most a level). Refused, with the smallest size "
                             f"that works, when not even one tile fits (default: {default_help}, measured when "
                             "each image is coded)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcae", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    compress = commands.add_parser(
        "compress", help="images -> .dcae files",
        description="Compress images (PNG, JPEG, TIFF, ...; grayscale, palette and 16-bit are converted "
                    "to 8-bit RGB, alpha is dropped) to .dcae files.")
    compress.add_argument("inputs", nargs="+", metavar="IN",
                          help="image files, directories (every image directly inside) or quoted globs")
    _add_codec_options(compress)
    compress.add_argument("--margin", type=_margin, default=MODEL_MARGIN, metavar="DELTA",
                          help=f"portable files decode on every setup whose scales differ from this encoder's "
                               f"by less than DELTA (natural log); larger costs more bytes (default: the margin "
                               f"its bundle records, the model's own (dcae.margin), {DEFAULT_MARGIN:g} for the embedded "
                               f"model and bundles that record none; at most {MAX_MARGIN:g})")
    compress.add_argument("--not-portable", action="store_true",
                          help="write a file that only this bundle and backend decode (no side stream)")
    _add_rate_options(compress)
    compress.set_defaults(run=_compress)

    decompress = commands.add_parser(
        "decompress", help=".dcae (or upstream .bin) files -> PNG images",
        description="Decompress .dcae files (or upstream DCAE .bin files) to PNG images.")
    decompress.add_argument("inputs", nargs="+", metavar="IN",
                            help=".dcae/.bin files, directories (every .dcae/.bin directly inside) or quoted globs")
    _add_codec_options(decompress)
    decompress.add_argument("--force", action="store_true",
                            help="try to decode a .dcae written by another bundle, precision or backend "
                                 "(refused by default: it usually decodes to noise, which is then "
                                 "reported as a desync)")
    decompress.set_defaults(run=_decompress)

    demo = commands.add_parser(
        "demo", help="compress and decompress the shipped sample image with the default model",
        description="The main job on the embedded default: export the default model's bundle (first use "
                    "only), compress the sample image(s) shipped with the package, decompress them, and "
                    "print size, bits per pixel, PSNR and timings.")
    _add_codec_options(demo)
    demo.set_defaults(run=_demo, output="dcae-demo")
    for action in demo._actions:
        if action.dest == "output":
            action.required = False
            action.help = "folder for the .dcae and decoded .png files (default: dcae-demo)"

    inspect = commands.add_parser(
        "inspect", help="show a .dcae (or .bin) file's header and streams",
        description="Check a .dcae or upstream .bin file and print its header fields, stream sizes and "
                    "hashes, and bits per pixel. Needs no bundle.")
    inspect.add_argument("file", metavar="FILE", help="a .dcae or upstream .bin file")
    inspect.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    inspect.set_defaults(run=_inspect)

    batch = commands.add_parser(
        "batch", help="code a whole data set in parallel on Ray (resumable; needs the [ray] extra)",
        description=BATCH_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    batch_commands = batch.add_subparsers(dest="batch_command", required=True, metavar="COMMAND")
    batch_compress = batch_commands.add_parser(
        "compress", help="images -> .dcae files, on Ray actors",
        description="Compress images to .dcae files on a pool of Ray actors: the same files, bytes and names "
                    "as `dcae compress`. " + BATCH_CONTRACT)
    _add_batch_options(batch_compress, "image files, directories (every image directly inside) or quoted globs")
    batch_compress.add_argument("--margin", type=_margin, default=MODEL_MARGIN, metavar="DELTA",
                                help="as for dcae compress (default: the model's margin, as its bundle records it)")
    batch_compress.add_argument("--not-portable", action="store_true",
                                help="as for dcae compress: files for this bundle and backend only")
    _add_rate_options(batch_compress)
    batch_decompress = batch_commands.add_parser(
        "decompress", help=".dcae / .bin files -> PNG images, on Ray actors",
        description="Decompress .dcae (or upstream .bin) files to PNG images on a pool of Ray actors: the same "
                    "files, bytes and names as `dcae decompress`. " + BATCH_CONTRACT)
    _add_batch_options(batch_decompress,
                       ".dcae/.bin files, directories (every .dcae/.bin directly inside) or quoted globs")
    batch_decompress.add_argument("--force", action="store_true",
                                  help="as for dcae decompress: try files written by another setup")
    return parser


BATCH_DESCRIPTION = """\
Code a whole data set in parallel on Ray (pip install 'dcae-deploy[ray]').
Each Ray actor opens the bundle once and reads and writes files by path; a
rerun skips every input whose output is already there and valid.

  dcae batch compress photos/ 'more/*.jpg' -o coded/ --workers 4
  dcae batch compress --files-from list.txt -o coded/ --address auto
  dcae batch decompress coded/ -o decoded/

Without --address a local Ray instance starts on this machine and stops at
the end. Every input gets a line in DST/results.jsonl (see docs/batch.md).
"""

BATCH_CONTRACT = (
    "Outputs are written atomically (temporary file, then rename). A rerun skips every input whose output "
    "exists and is valid (a .dcae: header and CRC sound, written by this bundle and backend with these "
    "options, of the input's size; a PNG: complete, every chunk's CRC sound, RGB of the coded size) and codes "
    "the rest. Each input gets one JSON line in the results file (input, output, status ok|skipped|failed|"
    "not-run, bytes, bpp, seconds, error, warnings, worker, index); a failing input is reported there and on "
    "stderr and never stops the job. Exit status 0 when every input is ok or skipped, else 1.")


def _workers(text: str):
    """N, or MIN:MAX (Ray Data scales the actor pool between them)."""
    low, colon, high = text.partition(":")
    try:
        values = (int(low), int(high)) if colon else (int(low),)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN:MAX, got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    if colon and values[0] > values[1]:
        raise argparse.ArgumentTypeError(f"MIN must not exceed MAX, got {text!r}")
    return values if colon else values[0]


def _gigabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GiB, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _add_batch_options(parser: argparse.ArgumentParser, inputs_help: str) -> None:
    from .backends import backend_names

    parser.add_argument("inputs", nargs="*", metavar="SRC", help=inputs_help)
    parser.add_argument("-o", "--output", required=True, metavar="DST",
                        help="output directory (created); one file per input, named after the input's stem as "
                             "the single-process command names it")
    parser.add_argument("--files-from", action="append", metavar="LIST",
                        help="a text file of input paths, one a line (# comments and blank lines skipped; "
                             "relative paths are relative to the list's directory); repeatable")
    parser.add_argument("-b", "--bundle", metavar="BUNDLE", type=absolute_path,
                        help="bundle directory written by dcae-export (default: the default model's bundle, "
                             "exported on first use); every Ray node must see it at this path")
    parser.add_argument("--backend", default="onnxruntime", choices=backend_names(),
                        help="what runs the graphs in each actor (default: onnxruntime on the CPU)")
    parser.add_argument("--threads", type=_positive_int, default=1, metavar="N",
                        help="threads per graph in each actor, and CPUs Ray reserves for it (default: 1)")
    # Several actors on one machine each take their default share of the
    # memory available: give a limit (and --worker-memory) when they are many.
    _add_memory_limit(parser, "in each actor, half the memory available")
    parser.add_argument("--workers", type=_workers, metavar="N|MIN:MAX",
                        help="number of Ray actors, each holding one loaded bundle; MIN:MAX lets Ray Data "
                             "scale the pool with the backlog (default: 1 up to the cluster's CPUs / --threads)")
    parser.add_argument("--address", metavar="ADDR",
                        help="join a running Ray cluster (e.g. auto, or HOST:6379) instead of starting a local "
                             "Ray instance; inputs, outputs and bundle must be at the same paths on every node")
    parser.add_argument("--cpus", type=_positive_int, metavar="N",
                        help="CPUs of the local Ray instance (default: all of this machine's)")
    parser.add_argument("--worker-memory", type=_gigabytes, metavar="GIB",
                        help="memory Ray reserves per actor, so it never packs more actors on a node than fit "
                             "(the official model at 768x512 peaks near 2.4 GiB)")
    parser.add_argument("--results", metavar="FILE", type=absolute_path,
                        help="the results file, JSON Lines, one line per input (default: DST/results.jsonl)")
    parser.add_argument("--redo", action="store_true",
                        help="code every input again, even those whose output is valid")
    parser.set_defaults(run=_batch)


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, message already printed)
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("dcae: interrupted", file=sys.stderr)
        return 130
    except _UsageError as exc:
        print(f"dcae: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except DcaeError as exc:
        print(f"dcae: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"dcae: error: {_os_error_message(exc)}", file=sys.stderr)
        return 1
    except MemoryError:
        print("dcae: error: out of memory", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, with a way to see the traceback
        if os.environ.get("DCAE_DEBUG"):
            raise
        print(f"dcae: error: internal error ({type(exc).__name__}: {_one_line(exc)}); "
              f"set DCAE_DEBUG=1 for a traceback", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
