"""Private files the daemon and its commands write outside the ledger (a saved email, the
audit trail's key and anchor): mode 0600, written in one step, never through a symlink."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


class RefusedPath(Exception):
    """A path that is not written to; the message names it and why."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path} {reason}")


def write_private(path: Path, text: str, *, replace: bool = False) -> None:
    """Write `text` to `path`, mode 0600, whole or not at all: readers see the old file or
    the new one, never a part. A symlink at `path` is refused (it could point anywhere), and
    so is an existing file unless `replace`."""
    if path.is_symlink():
        raise RefusedPath(path, "is a symbolic link: name a regular file")
    if path.exists() and (not replace or not path.is_file()):
        raise RefusedPath(path, "exists already" if path.is_file() else "is not a regular file")
    # mkstemp makes the file 0600 whatever the umask.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            # rename replaces a symlink put there meanwhile, never writes through it.
            os.replace(temporary, path)
        else:
            try:
                # link fails if anything appeared at the path meanwhile: no silent overwrite.
                os.link(temporary, path)
            except FileExistsError:
                raise RefusedPath(path, "exists already") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
