"""`dcae`: compress images to `.dcae` files, decompress them, inspect them.

Every failure a user can cause is one line on stderr, `dcae: error: ...`,
and exit status 1 (2 for a command-line mistake, 130 for Ctrl-C); never a
traceback. Outputs are written atomically, so a failure never leaves a
half-written file. With several inputs the command goes on past a failing
file, reports each failure, and exits 1 at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

from .errors import BadInputError, DcaeError
from .fileio import absolute_path
from .portable import DEFAULT_MARGIN, MAX_MARGIN, check_margin

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm", ".gif"}
CODED_SUFFIXES = {".dcae", ".bin"}
_GLOB_CHARACTERS = set("*?[")

DESCRIPTION = """\
Learned image compression with DCAE, running an exported bundle (ONNX graphs
and entropy tables) on onnxruntime; no PyTorch needed.

  dcae compress photo.png -o photo.dcae
  dcae compress photos/ 'more/*.jpg' -o coded/          one .dcae per image
  dcae decompress coded/ -o decoded/                    one .png per file
  dcae inspect photo.dcae --json

Without -b, the default model's bundle is used; it is exported once, on first
use, into $DCAE_CACHE (default ~/.cache/dcae-deploy), which needs the
reference extra (pip install dcae-deploy[reference]).
"""


class _UsageError(Exception):
    """A command-line mistake found after parsing: exit status 2."""


def _one_line(message) -> str:
    return " ".join(str(message).split()) or "unknown error"


def _os_error_message(exc: OSError) -> str:
    reason = exc.strerror or type(exc).__name__
    return f"{reason}: {exc.filename}" if exc.filename else reason


def _margin(text: str) -> float:
    try:
        return check_margin(float(text))
    except (ValueError, BadInputError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# ---- inputs and outputs --------------------------------------------------------------

def _expand_inputs(arguments: list[str], suffixes: set[str], what: str) -> tuple[list[Path], bool]:
    """Files named by the arguments (files, directories, globs), in order,
    without duplicates; and whether the only argument named one file itself."""
    files: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                raise BadInputError(f"no {what} files in directory {path}")
            files += found
        elif path.exists():
            files.append(path)
        elif _GLOB_CHARACTERS & set(argument):
            found = sorted(Path(p) for p in glob.glob(argument) if Path(p).is_file())
            if not found:
                raise BadInputError(f"no files match {argument}")
            files += found
        else:
            raise BadInputError(f"no such file or directory: {argument}")
    unique = list(dict.fromkeys(files))
    single_file = len(arguments) == 1 and len(unique) == 1 and unique[0] == Path(arguments[0])
    return unique, single_file


def _plan_outputs(inputs: list[Path], single_file: bool, output: str, suffix: str) -> list[Path]:
    """One output path per input: `output` itself for one named file (unless
    it is a directory), else `output/<stem><suffix>`."""
    out = Path(output)
    if single_file and not out.is_dir() and not output.endswith(("/", os.sep)):
        return [out]
    if out.exists() and not out.is_dir():
        raise _UsageError(f"-o {output} must be a directory when coding several files")
    targets = [out / f"{p.stem}{suffix}" for p in inputs]
    seen: dict[Path, Path] = {}
    for source, target in zip(inputs, targets):
        if target in seen:
            raise _UsageError(f"inputs {seen[target]} and {source} would both write {target}")
        seen[target] = source
    return targets


@contextlib.contextmanager
def _writing(target: Path):
    """Name the output in a write error (not the temporary file it goes through)."""
    try:
        yield
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {target}: {exc.strerror or exc}") from None


def _open_codec(args):
    from .codec import Codec
    from .default_bundle import ensure_default_bundle

    bundle = args.bundle
    if bundle is None:
        bundle = ensure_default_bundle(announce=lambda m: print(f"dcae: {m}", file=sys.stderr))
    return Codec(bundle, backend=args.backend, threads=args.threads)


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
    from .fileio import write_atomically

    inputs, single = _expand_inputs(args.inputs, IMAGE_SUFFIXES, "image")
    targets = _plan_outputs(inputs, single, args.output, ".dcae")
    codec = _open_codec(args)

    def work(source: Path, target: Path) -> str:
        result = codec.encode(source, None if args.not_portable else args.margin)
        with _writing(target):
            write_atomically(target, result.data)
        bpp = 8 * len(result.data) / (result.height * result.width)
        return f"{source} -> {target}: {len(result.data)} bytes, {bpp:.4f} bpp"

    return _for_each(list(zip(inputs, targets)), work)


def _decompress(args) -> int:
    from .imaging import save_image

    inputs, single = _expand_inputs(args.inputs, CODED_SUFFIXES, ".dcae or .bin")
    targets = _plan_outputs(inputs, single, args.output, ".png")
    codec = _open_codec(args)

    def work(source: Path, target: Path) -> str:
        pixels = codec.decompress(source.read_bytes(), force=args.force)
        with _writing(target):
            save_image(pixels, target)
        return f"{source} -> {target}: {pixels.shape[0]}x{pixels.shape[1]}"

    return _for_each(list(zip(inputs, targets)), work)


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
    from .container import FLAG_PORTABLE, FLAG_REDUCED_PRECISION_ENTROPY, sniff, unpack, unpack_bin
    from .geometry import padded_size, z_shape_for
    from .portable import decode_side_stream

    if sniff(data) == "bin":
        parsed = unpack_bin(data)
        height, width, y, z = parsed.height, parsed.width, parsed.y, parsed.z
        info = {"format": "bin", "version": None, "flags": None, "reduced_precision_entropy": None,
                "portable": False, "fingerprint": None, "margin": None, "side_bytes": 0, "side_marked": 0}
    else:
        parsed = unpack(data)  # raises with a reason when this is not a sound .dcae
        header = parsed.header
        height, width, y, z = header.height, header.width, parsed.y, parsed.z
        marked = 0
        if parsed.side:
            # The y latent's element count depends on the model, which inspect
            # does not load: positions are bounded by the format's limit only.
            marked = decode_side_stream(parsed.side, 2**31 - 1).positions.size
        info = {"format": "dcae", "version": header.version,
                "flags": (FLAG_REDUCED_PRECISION_ENTROPY if header.reduced_precision_entropy else 0)
                | (FLAG_PORTABLE if header.portable else 0),
                "reduced_precision_entropy": header.reduced_precision_entropy, "portable": header.portable,
                "fingerprint": header.fingerprint.hex(), "margin": header.margin,
                "side_bytes": len(parsed.side), "side_marked": marked}
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
        ("image", f"{info['height']}x{info['width']} (padded {info['padded_height']}x{info['padded_width']})"),
        ("z shape", f"{info['z_height']}x{info['z_width']}"),
        ("fingerprint", info["fingerprint"] or "-"),
        ("z stream", f"{info['z_bytes']} bytes, sha256 {info['z_sha256']}"),
        ("y stream", f"{info['y_bytes']} bytes, sha256 {info['y_sha256']}"),
        ("side stream", f"{info['side_bytes']} bytes, {info['side_marked']} elements listed"),
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
                             "the same model decodes them; others decode only on the setup that wrote them")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="threads per graph (default: one per CPU core); does not change the bitstream")


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
    compress.add_argument("--margin", type=_margin, default=DEFAULT_MARGIN, metavar="DELTA",
                          help=f"portable files decode on every setup whose scales are within DELTA (natural "
                               f"log) of this encoder's; larger costs more bytes (default: {DEFAULT_MARGIN:g}, "
                               f"at most {MAX_MARGIN:g})")
    compress.add_argument("--not-portable", action="store_true",
                          help="write a file that only this bundle and backend decode (no side stream)")
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
    return parser


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
