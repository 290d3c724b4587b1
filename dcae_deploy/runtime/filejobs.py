"""Coding one file to one file, and judging an output left by an earlier run.

`compress_file` / `decompress_file` are what `dcae compress|decompress` do for
each input; `code_one` wraps them for `dcae batch`: it never raises, and
returns the input's line of the results file. Nothing here imports Ray.
"""
from __future__ import annotations

import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import DcaeError
from .fileio import write_atomically, writing_to
from .portable import MODEL_MARGIN
from .quality import RateChoice

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The statuses of a results line.
OK, SKIPPED, FAILED, NOT_RUN = "ok", "skipped", "failed", "not-run"


def one_line(message) -> str:
    return " ".join(str(message).split()) or "unknown error"


def os_error_message(exc: OSError) -> str:
    reason = exc.strerror or type(exc).__name__
    return f"{reason}: {exc.filename}" if exc.filename else reason


def compress_file(codec, source: Path, target: Path, margin: float | str | None = MODEL_MARGIN,
                  rate: RateChoice = RateChoice()):
    """Image file -> `.dcae` file (written atomically) at the `rate` asked
    for; the `EncodeResult`."""
    result = codec.encode(source, margin, rate.quality, rate.max_bytes, rate.target_bpp)
    with writing_to(target):
        write_atomically(target, result.data)
    return result


def decompress_file(codec, source: Path, target: Path, force: bool = False):
    """`.dcae` / `.bin` file -> PNG file (written atomically); the pixels."""
    from .imaging import save_image

    pixels = codec.decompress(Path(source).read_bytes(), force=force)
    with writing_to(target):
        save_image(pixels, target)
    return pixels


# ---- is an existing output the one this job would write? ------------------------------------

class InvalidOutput(Exception):
    """An existing output that must be written again; the message says why."""


def expected_header_fields(codec, margin: float | str | None, rate: RateChoice = RateChoice()) -> dict:
    """The header fields (besides the image size) of the files `codec` writes
    with `margin` at `rate`, exactly as `Codec.encode` chooses them (no
    gain_code under rate control, whose gain depends on the image)."""
    from .container import DcaeHeader

    margin = codec.resolve_margin(margin)
    if margin is not None and codec.portable:
        header = DcaeHeader(1, 1, codec.model_fingerprint, margin=margin)
    else:
        header = DcaeHeader(1, 1, codec.fingerprint, codec.manifest.reduced_precision_entropy)
    fields = {"fingerprint": header.fingerprint, "reduced_precision_entropy": header.reduced_precision_entropy,
              "margin": header.margin}
    if not rate.controlled:
        fields["gain_code"] = rate.gain_code(codec.rate_levels)
    return fields


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from an image file's header (no decoding)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.height, img.width
    except Exception as exc:  # the input itself is bad: coding it again will say how
        raise InvalidOutput(f"cannot read the input's size ({one_line(exc)})") from None


def check_dcae_output(source: Path, target: Path, expected: dict,
                      rate: RateChoice = RateChoice()) -> tuple[int, int, int]:
    """(bytes, height, width) of `target` if it is a sound `.dcae` of
    `source` (header fields and CRC checked, written by this setup with
    this job's options, the input's image size, within the size target);
    else `InvalidOutput`. `FileNotFoundError` when there is no output."""
    from .container import unpack
    from .errors import CorruptStreamError

    data = target.read_bytes()
    try:
        header = unpack(data).header
    except CorruptStreamError as exc:
        raise InvalidOutput(one_line(exc)) from None
    found = {"fingerprint": header.fingerprint, "reduced_precision_entropy": header.reduced_precision_entropy,
             "margin": header.margin, "gain_code": header.gain_code}
    found = {k: found[k] for k in expected}
    if found != expected:
        different = ", ".join(k for k in expected if found[k] != expected[k])
        raise InvalidOutput(f"written by another setup or with other options ({different} differ)")
    size = _image_size(source)
    if (header.height, header.width) != size:
        raise InvalidOutput(f"codes a {header.height}x{header.width} image, the input is {size[0]}x{size[1]}")
    if not rate.fits(len(data), header.height, header.width):
        raise InvalidOutput(f"its {len(data)} bytes miss the size target")
    return len(data), header.height, header.width


def coded_size(data: bytes) -> tuple[int, int]:
    """(height, width) a `.dcae` or upstream `.bin` file decodes to (checked as the decoder does)."""
    from .container import sniff, unpack, unpack_bin

    if sniff(data) == "bin":
        parsed = unpack_bin(data)
        return parsed.height, parsed.width
    header = unpack(data).header
    return header.height, header.width


def check_png_output(target: Path, height: int, width: int) -> None:
    """Nothing if `target` is a complete PNG (every chunk's CRC checked, the
    pixels decoded) of an RGB image of that size; else `InvalidOutput`.
    `FileNotFoundError` when there is no output."""
    from PIL import Image

    with open(target, "rb") as f:
        if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
            raise InvalidOutput("not a PNG file")
    try:
        with Image.open(target) as img:
            img.verify()  # chunk structure and CRCs, IEND present
        with Image.open(target) as img:
            img.load()  # the compressed pixel data is complete and inflates
            mode, size = img.mode, (img.height, img.width)
    except Exception as exc:
        raise InvalidOutput(f"damaged PNG ({one_line(exc)})") from None
    if mode != "RGB" or size != (height, width):
        raise InvalidOutput(f"a {mode} {size[0]}x{size[1]} PNG, expected RGB {height}x{width}")


# ---- one input of a batch job ----------------------------------------------------------------

@dataclass(frozen=True)
class FileJob:
    """What a batch worker does with each input."""

    mode: str  # "compress" or "decompress"
    bundle: str  # an absolute path
    backend: str = "onnxruntime"
    threads: int | None = 1
    margin: float | str | None = MODEL_MARGIN  # compress: None writes files that are not portable
    force: bool = False  # decompress: try files of another setup
    redo: bool = False  # code every input again, even where a valid output exists
    memory_limit: int | None = None  # bytes for the image transforms (None: a share of what is available)
    rate: RateChoice = RateChoice()  # compress: quality, or rate control's size target

    def open_codec(self):
        from .codec import Codec

        return Codec(self.bundle, backend=self.backend, threads=self.threads, memory_limit=self.memory_limit)


def _bpp(nbytes: int, height: int, width: int) -> float:
    return round(8 * nbytes / (height * width), 6)


def code_one(codec, job: FileJob, source: str, target: str, expected: dict | None = None) -> dict:
    """Code `source` to `target` unless a valid output is there already.

    Never raises (but for KeyboardInterrupt): returns the results line,
    {input, output, status, bytes, bpp, seconds, error, warnings, worker},
    where `bytes` is the size of the coded file (the output of compress, the
    input of decompress) and `bpp` its bits per pixel of the image."""
    started = time.perf_counter()
    source_path, target_path = Path(source), Path(target)
    record = {"input": source, "output": target, "status": FAILED, "bytes": None, "bpp": None, "seconds": None,
              "error": None, "warnings": [], "worker": f"{socket.gethostname()}:{os.getpid()}"}
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if job.mode == "compress":
                if expected is None:
                    expected = expected_header_fields(codec, job.margin, job.rate)
                facts = None
                if not job.redo:
                    facts = _existing(lambda: check_dcae_output(source_path, target_path, expected, job.rate),
                                      notes)
                if facts is None:
                    target_path.parent.mkdir(parents=True, exist_ok=True)
                    result = compress_file(codec, source_path, target_path, job.margin, job.rate)
                    facts, record["status"] = (len(result.data), result.height, result.width), OK
                else:
                    record["status"] = SKIPPED
                nbytes, height, width = facts
            elif job.mode == "decompress":
                data = source_path.read_bytes()
                height, width = coded_size(data)  # a damaged input fails here, before any work
                nbytes = len(data)
                done = False
                if not job.redo:
                    done = _existing(lambda: check_png_output(target_path, height, width) or True, notes)
                if done:
                    record["status"] = SKIPPED
                else:
                    target_path.parent.mkdir(parents=True, exist_ok=True)
                    pixels = decompress_file(codec, source_path, target_path, job.force)
                    height, width = pixels.shape[:2]
                    record["status"] = OK
            else:
                raise ValueError(f"unknown mode {job.mode!r}")
            record["bytes"], record["bpp"] = nbytes, _bpp(nbytes, height, width)
        except DcaeError as exc:
            record["error"] = one_line(exc)
        except OSError as exc:
            record["error"] = os_error_message(exc)
        except MemoryError:
            record["error"] = "out of memory"
        except Exception as exc:  # a bug: still reported against this input, and the job goes on
            record["error"] = f"internal error ({type(exc).__name__}: {one_line(exc)})"
    record["warnings"] = notes + [one_line(w.message) for w in caught]
    record["seconds"] = round(time.perf_counter() - started, 4)
    return record


def _existing(check, notes: list[str]):
    """`check()`'s value if the output exists and is valid; None if it does
    not exist; None with a note saying why if it exists but is not valid."""
    try:
        return check()
    except FileNotFoundError:
        return None
    except InvalidOutput as exc:
        notes.append(f"existing output is not valid ({exc}): coded again")
    except OSError as exc:
        notes.append(f"existing output cannot be read ({os_error_message(exc)}): coded again")
    return None
