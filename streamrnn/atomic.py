"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO, TextIO


def write_with(path: str | Path, fill: Callable[[BinaryIO], None]) -> int:
    """Have ``fill`` write a temporary file beside ``path``, fsync it, rename it over ``path``,
    fsync the folder. Returns the file's size."""
    with _beside(path, "wb") as f:
        fill(f)
        f.flush()
        return os.fstat(f.fileno()).st_size


def replacing(path: str | Path) -> AbstractContextManager[TextIO]:
    """A text file written beside ``path`` in the block, renamed over it once the block ends; gone,
    and ``path`` as it was, if the block raises (Ctrl-C included). For output written as it comes."""
    return _beside(path, "w", newline="")


@contextmanager
def _beside(path: str | Path, mode: str, **kw: object) -> Iterator:
    """The file of a ``with`` block, written beside ``path`` and renamed over it, fsynced, once the
    block ends; removed, ``path`` left as it was, if the block raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    """``data`` as the file at ``path``, atomically (see :func:`write_with`)."""
    write_with(path, lambda f: f.write(data))


def fsync_dir(folder: str | Path) -> None:
    """Make a folder's entries (a file created, renamed or removed in it) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())
