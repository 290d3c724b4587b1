"""Which files a command codes, and where each output goes.

Shared by `dcae compress|decompress` (one process) and `dcae batch` (Ray), so
that both pick the same inputs and write the same output names.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

from .errors import BadInputError, DcaeError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm", ".gif"}
CODED_SUFFIXES = {".dcae", ".bin"}
_GLOB_CHARACTERS = set("*?[")


class UsageError(DcaeError):
    """A command-line mistake found after parsing (the CLI exits with status 2)."""


def expand_inputs(arguments: list[str], suffixes: set[str], what: str) -> tuple[list[Path], bool]:
    """Files named by the arguments (files, directories, globs), in order,
    without duplicates; and whether the only argument named one file itself.

    A directory contributes the files directly inside it whose suffix is in
    `suffixes`; a glob, every file it matches; a file, itself."""
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


def read_path_list(list_file: str | os.PathLike) -> list[Path]:
    """The paths in a text file, one a line; blank lines and lines starting
    with `#` are skipped, and a relative path is relative to the list file's
    directory. The paths themselves are not checked here (a missing one is
    that input's failure, reported with the others)."""
    list_path = Path(list_file)
    try:
        text = list_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputError(f"no such list file: {list_path}") from None
    except IsADirectoryError:
        raise BadInputError(f"list file {list_path} is a directory") from None
    except UnicodeDecodeError:
        raise BadInputError(f"list file {list_path} is not UTF-8 text (expected one path a line)") from None
    base = list_path.parent
    paths = []
    for line in text.splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            paths.append(base / Path(entry).expanduser())
    if not paths:
        raise BadInputError(f"list file {list_path} names no paths")
    return paths


def plan_outputs(inputs: list[Path], single_file: bool, output: str, suffix: str) -> list[Path]:
    """One output path per input: `output` itself for one named file (unless
    it is a directory), else `output/<stem><suffix>`. Two inputs that would
    write the same output are a `UsageError`."""
    out = Path(output)
    if single_file and not out.is_dir() and not output.endswith(("/", os.sep)):
        return [out]
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {output} must be a directory when coding several files")
    targets = [out / f"{p.stem}{suffix}" for p in inputs]
    seen: dict[Path, Path] = {}
    for source, target in zip(inputs, targets):
        if target in seen:
            raise UsageError(f"inputs {seen[target]} and {source} would both write {target}")
        seen[target] = source
    return targets
