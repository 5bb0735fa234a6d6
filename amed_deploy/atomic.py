"""Atomic file output: every file the tool writes appears complete or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def _temp_beside(path: Path) -> Iterator[str]:
    """A temp file name in path's folder; on success it is fsynced and renamed onto path, on any
    exception removed (path untouched)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temp file beside `path` for binary writing; on success fsync and rename it into place.

    On any exception the temp file is removed and `path` is left untouched.
    """
    with _temp_beside(Path(path)) as tmp, open(tmp, "wb") as f:
        yield f


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_with(path: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Atomically produce `path` with a library function that insists on writing to a file name.

    `writer(tmp_path)` writes a temp file in the same folder, which is then fsynced and renamed.
    """
    with _temp_beside(Path(path)) as tmp:
        writer(tmp)


def _umask_mode() -> int:
    """Permissions a plain open() would give a new file (mkstemp's temp files are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
