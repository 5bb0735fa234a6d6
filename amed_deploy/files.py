"""Generic file helpers: atomic output (every file the tool writes appears complete or not at all)
and streaming file hashes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import signal
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import AmedError

# errnos meaning "this filesystem cannot hard-link", for which overwrite=False falls back to O_EXCL + rename.
_NO_HARDLINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV})
_RANDOM_CHARS = 8  # length of the random part of a temp name
_TEMP_SUFFIX = ".tmp"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, read in chunks so multi-GB checkpoints do not need to fit in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[BinaryIO]:
    """Open a temp file beside `path` for binary writing; on success fsync and move it into place.

    On any exception (Ctrl-C included) the temp file is removed and `path` is left untouched.
    With `overwrite=False` an existing `path` is never replaced, not even one created mid-write.
    """
    with _temp_beside(Path(path), overwrite) as tmp, open(tmp, "wb") as f:
        yield f


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> None:
    """Write `data` to `path` atomically (see `atomic_open`)."""
    with atomic_open(path, overwrite=overwrite) as f:
        f.write(data)


def atomic_write_with(path: str | os.PathLike, writer: Callable[[str], None], *, overwrite: bool = True) -> None:
    """Atomically produce `path` with a library function that insists on writing to a file name.

    `writer(tmp_path)` writes a temp file in the same folder, which is then fsynced and moved into place.
    """
    with _temp_beside(Path(path), overwrite) as tmp:
        writer(tmp)


@contextlib.contextmanager
def sigterm_raises_exit() -> Iterator[None]:
    """While active, SIGTERM raises SystemExit(143) in the main thread, so the atomic writers' cleanup
    removes their temp files just as for Ctrl-C (the default SIGTERM action kills without cleanup).

    A no-op outside the main thread, where Python cannot install signal handlers.
    """

    def _raise(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread
        installed = False
    else:
        installed = True
    try:
        yield
    finally:
        if installed:
            # None: the previous handler was set outside Python; the default is the closest we can restore.
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def _temp_beside(path: Path, overwrite: bool) -> Iterator[str]:
    """A temp file name in path's folder; on success it is fsynced and moved onto path, on any
    exception removed (path untouched). OSErrors about the temp file are re-raised naming path."""
    check_target(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _move_exclusive(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and _about_temp(e, tmp):
            raise OSError(e.errno, f"cannot write {path}: {e.strerror}") from None
        raise
    _fsync_dir(path.parent)


def check_input_file(path: Path, kind: str) -> None:
    """Refuse a missing, directory or empty input in one line, before a parser fails on it obscurely."""
    if not path.exists():
        raise AmedError(f"{path}: no such file")
    if path.is_dir():
        raise AmedError(f"{path} is a directory, not {kind}")
    if path.stat().st_size == 0:
        raise AmedError(f"{path} is empty")


def check_target(path: Path, overwrite: bool) -> None:
    """Refuse early, before any work is done, to write where the final move would be wrong or fail."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISDIR(st.st_mode):
        raise AmedError(f"{path} is a directory; give a file name to write")
    if not overwrite:
        raise AmedError(_exists_message(path))
    # Checked by mode bits, not os.access: as root every file is "writable", yet 0444 says "keep this".
    if not st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise AmedError(f"{path} is write-protected; make it writable (chmod u+w) to replace it")


def _exists_message(path: Path) -> str:
    return f"{path} already exists; pass --force to replace it"


def _create_temp(path: Path) -> str:
    """Create `.{name}.<random>.tmp` beside path, the name part shortened so the whole fits NAME_MAX."""
    folder = path.parent
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    if not name_max or name_max < 0:
        name_max = 255
    budget = name_max - len(".") - len(".") - _RANDOM_CHARS - len(_TEMP_SUFFIX)
    stem = path.name
    while stem and len(os.fsencode(stem)) > budget:  # NAME_MAX counts bytes, not characters
        stem = stem[:-1]
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = str(folder / f".{stem}.{secrets.token_hex(_RANDOM_CHARS // 2)}{_TEMP_SUFFIX}")
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileExistsError:
            continue
        except OSError as e:
            raise OSError(e.errno, f"cannot write {path}: {e.strerror}") from None
        os.close(fd)
        return tmp
    raise OSError(errno.EEXIST, f"cannot write {path}: no free temp file name in {folder}")


def _move_exclusive(tmp: str, path: Path) -> None:
    """Move tmp onto path only if path does not exist, atomically: a hard link fails on an existing name."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise AmedError(_exists_message(path)) from None
    except OSError as e:
        if e.errno not in _NO_HARDLINKS:
            raise
        _claim_then_replace(tmp, path)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def _claim_then_replace(tmp: str, path: Path) -> None:
    """For filesystems without hard links: claim the name with O_EXCL, then rename over our own claim."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        raise AmedError(_exists_message(path)) from None
    try:
        claimed = os.fstat(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        # Remove the empty placeholder, but only if it is still ours.
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) == (claimed.st_dev, claimed.st_ino):
                os.unlink(path)
        raise


def _about_temp(e: OSError, tmp: str) -> bool:
    """Whether an OSError concerns the temp file (or no file at all, e.g. ENOSPC from write()),
    so that naming the user's path instead is right. Errors about other files pass through as they are."""
    if e.errno is None:
        return False
    names = {os.fsdecode(n) for n in (e.filename, e.filename2) if isinstance(n, (str, bytes, os.PathLike))}
    return not names or tmp in names


def _umask_mode() -> int:
    """Permissions a plain open() would give a new file (temp files are created 0600)."""
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
