"""What every benchmark's record holds and how it is written: the images it
ran on, the facts of the run (command, CPU, date, load), paths relative to
where it ran, and the Markdown and JSON files. Imported by every benchmark,
it imports none of them."""
from __future__ import annotations

from pathlib import Path

from dcae_deploy.runtime.inputs import IMAGE_SUFFIXES


def find_images(folder: str, limit: int | None) -> list[Path]:
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"--images {folder} is not a directory")
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if limit is not None:
        images = images[: max(0, limit)]
    if not images:
        raise ValueError(f"no images in {folder}")
    return images


def relative_paths(value, start: str | None = None):
    """`value` (a report: dicts, lists, strings) with absolute paths made relative
    to `start` (default: the current directory, where the command was typed), so
    that a checked-in report names no folder of the machine that wrote it."""
    import os

    start = os.path.abspath(start or os.getcwd())
    if isinstance(value, dict):
        return {k: relative_paths(v, start) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(relative_paths(v, start) for v in value)
    if isinstance(value, str):
        if os.path.isabs(value) and "\n" not in value:
            return os.path.relpath(value, start)
        return value.replace(start + os.sep, "")
    return value


def run_facts(module: str, argv) -> dict:
    """What every standalone benchmark's report states about its run: the
    command as typed, the CPU, the date and the load average at the start."""
    import datetime
    import shlex
    import sys

    from .machine import cpu_description, load_average

    return {"command": shlex.join(["python", "-m", module] + list(argv if argv is not None else sys.argv[1:])),
            "cpu": cpu_description(), "date": datetime.date.today().isoformat(), "load_before": load_average()}


def emit_report(result: dict, render, out: Path | None, json_path: Path | None) -> None:
    """Write a standalone benchmark's Markdown (`render(result)`) to `out` and
    its numbers to `json_path` where given, and print the Markdown."""
    import json

    text = render(result)
    if json_path:
        json_path.write_text(json.dumps(result, indent=1))
    if out:
        out.write_text(text)
    print(text)
