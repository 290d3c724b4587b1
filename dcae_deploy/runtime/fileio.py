"""Paths from the command line, and writing output files so that a failure
never leaves a half-written one."""
from __future__ import annotations

import contextlib
import os
import secrets


def absolute_path(text: str) -> str:
    """A path argument made absolute against the current directory, as an
    argparse `type`: the commands hand paths to subprocesses that run in
    another directory, and record them in reports and manifests, where a
    relative path would point elsewhere. `~` is expanded (an option written
    `--out=~/x` reaches us unexpanded); symbolic links are kept as given."""
    return os.path.abspath(os.path.expanduser(text))


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory.

    The temporary file is renamed over `path` only once every byte is on disk,
    so readers see either the old file or the complete new one; on any error
    the temporary file is removed and `path` is left as it was.
    """
    path = os.fspath(path)
    directory, name = os.path.split(path)
    # Same directory, so the rename cannot cross filesystems (os.replace is
    # atomic only within one). O_EXCL never touches somebody else's file, and
    # mode 0o666 lets the umask decide the permissions, as open() would.
    temp_path = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, "wb") as temp_file:
            temp_file.write(data)
            temp_file.flush()
            # Without the fsync a crash after the rename can leave an empty
            # or partial file under the final name on some filesystems.
            os.fsync(temp_file.fileno())
        os.replace(temp_path, path)
    except BaseException:
        try:
            os.unlink(temp_path)
        except FileNotFoundError:
            pass
        raise


@contextlib.contextmanager
def writing_to(target: str | os.PathLike):
    """Name the output in a write error (not the temporary file it goes through)."""
    try:
        yield
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {target}: {exc.strerror or exc}") from None
