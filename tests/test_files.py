"""Atomic writers: no-clobber mode, write-protected targets, long names, error messages, SIGTERM cleanup."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from amed_deploy import files
from amed_deploy.errors import AmedError

REPO = Path(__file__).resolve().parent.parent


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _env() -> dict[str, str]:
    extra = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *extra])}


@pytest.fixture(params=["link", "no_hardlinks"])
def link_mode(request, monkeypatch):
    """Run a test both with hard links and on a 'filesystem' whose os.link fails with EPERM."""
    if request.param == "no_hardlinks":

        def _no_link(*a, **k):
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))

        monkeypatch.setattr(files.os, "link", _no_link)
    return request.param


def test_no_overwrite_refuses_existing_file(tmp_path, link_mode):
    target = tmp_path / "out.png"
    target.write_bytes(b"precious")
    with pytest.raises(AmedError, match=r"out\.png already exists; pass --force to replace it"):
        files.atomic_write_bytes(target, b"new", overwrite=False)
    assert target.read_bytes() == b"precious"
    assert _names(tmp_path) == ["out.png"]


def test_no_overwrite_refuses_file_created_mid_write(tmp_path, link_mode):
    """The final step itself is create-exclusive: a file appearing after the early check still wins."""
    target = tmp_path / "out.png"
    with pytest.raises(AmedError, match="already exists"):
        with files.atomic_open(target, overwrite=False) as f:
            f.write(b"mine")
            target.write_bytes(b"someone else's")
    assert target.read_bytes() == b"someone else's"
    assert _names(tmp_path) == ["out.png"]


def test_no_overwrite_writes_new_file(tmp_path, link_mode):
    target = tmp_path / "sub" / "new.bin"
    files.atomic_write_bytes(target, b"hello", overwrite=False)
    files.atomic_write_with(tmp_path / "with.bin", lambda tmp: Path(tmp).write_bytes(b"via writer"), overwrite=False)
    assert target.read_bytes() == b"hello"
    assert (tmp_path / "with.bin").read_bytes() == b"via writer"
    assert _names(target.parent) == ["new.bin"]
    assert _names(tmp_path) == ["sub", "with.bin"]
    assert target.stat().st_nlink == 1  # the temp's hard link is gone


def test_default_still_replaces(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    files.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert _names(tmp_path) == ["out.bin"]


def test_two_concurrent_no_overwrite_writers_one_wins(tmp_path):
    target = tmp_path / "race.bin"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from amed_deploy.files import atomic_open\n"
        "from amed_deploy.errors import AmedError\n"
        "target, me, payload = Path(sys.argv[1]), sys.argv[2], sys.argv[3].encode() * 100_000\n"
        "try:\n"
        "    with atomic_open(target, overwrite=False) as f:\n"
        "        f.write(payload)\n"
        "        (target.parent / ('ready.' + me)).touch()\n"
        "        deadline = time.time() + 10\n"  # wait until both are mid-write, so they really overlap
        "        while len(list(target.parent.glob('ready.*'))) < 2 and time.time() < deadline:\n"
        "            time.sleep(0.01)\n"
        "        time.sleep(0.1)\n"
        "except AmedError as e:\n"
        "    print(e)\n"
        "    sys.exit(3)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(target), me, me], env=_env(), stdout=subprocess.PIPE, text=True
        )
        for me in ("A", "B")
    ]
    outs = [p.communicate(timeout=30)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3], outs
    assert any("race.bin already exists; pass --force" in o for o in outs)
    assert target.read_bytes() in (b"A" * 100_000, b"B" * 100_000)
    assert _names(tmp_path) == ["race.bin", "ready.A", "ready.B"]


@pytest.mark.parametrize("overwrite", [True, False])
def test_directory_target_refused(tmp_path, overwrite):
    target = tmp_path / "adir"
    target.mkdir()
    with pytest.raises(AmedError, match=r"adir is a directory"):
        files.atomic_write_bytes(target, b"x", overwrite=overwrite)
    assert target.is_dir() and _names(target) == []
    assert _names(tmp_path) == ["adir"]


def test_write_protected_target_refused(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_bytes(b"do not touch")
    target.chmod(0o444)
    with pytest.raises(AmedError, match=r"keep\.txt is write-protected; make it writable \(chmod u\+w\)"):
        files.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"do not touch"
    assert _names(tmp_path) == ["keep.txt"]
    target.chmod(0o644)  # writable again: replacing works
    files.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("length", [250, 255])
@pytest.mark.parametrize("overwrite", [True, False])
def test_long_names_written(tmp_path, length, overwrite):
    target = tmp_path / ("n" * (length - 4) + ".bin")
    assert len(target.name) == length
    files.atomic_write_bytes(target, b"long", overwrite=overwrite)
    assert target.read_bytes() == b"long"
    assert _names(tmp_path) == [target.name]


def test_long_non_ascii_name_fits_in_bytes(tmp_path):
    """NAME_MAX counts bytes: 120 two-byte characters are 240 bytes, too long for the untruncated temp name."""
    target = tmp_path / ("é" * 120 + ".bin")
    files.atomic_write_bytes(target, b"x")
    assert target.read_bytes() == b"x"


@pytest.mark.parametrize("step", ["replace", "link"])
def test_rename_error_names_target_not_temp(tmp_path, monkeypatch, step):
    target = tmp_path / "final.bin"

    def _fail(src, dst, *a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), src, None, dst)

    monkeypatch.setattr(files.os, step, _fail)
    with pytest.raises(OSError) as info:
        files.atomic_write_bytes(target, b"x", overwrite=step == "replace")
    assert info.value.errno == errno.EROFS
    assert str(target) in str(info.value)
    assert ".tmp" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert _names(tmp_path) == []


def test_write_error_names_target_and_keeps_errno_type(tmp_path, monkeypatch):
    target = tmp_path / "final.bin"
    target.write_bytes(b"old")
    monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError, match=r"cannot write .*final\.bin: I/O error") as info:
        files.atomic_write_bytes(target, b"new")
    assert info.value.errno == errno.EIO
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["final.bin"]


def test_unrelated_oserror_in_body_passes_through(tmp_path):
    """An error about some other file (say, a missing input) is not relabelled as a write failure."""
    missing = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError) as info:
        with files.atomic_open(tmp_path / "out.bin") as f:
            f.write(missing.read_bytes())
    assert info.value.filename == str(missing)
    assert _names(tmp_path) == []


def test_sigterm_removes_temp_file(tmp_path):
    target = tmp_path / "big.bin"
    code = (
        "import sys, time\n"
        "from amed_deploy.files import atomic_open, sigterm_raises_exit\n"
        "with sigterm_raises_exit(), atomic_open(sys.argv[1]) as f:\n"
        "    for _ in range(10_000):\n"
        "        f.write(b'x' * 65536); f.flush(); time.sleep(0.001)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], env=_env())
    deadline = time.time() + 20
    while time.time() < deadline and not any(p.name.startswith(".big.bin.") for p in tmp_path.iterdir()):
        time.sleep(0.02)
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir()), "the writer never started"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    assert _names(tmp_path) == []


def test_sigterm_handler_restored_and_noop_off_main_thread():
    before = signal.getsignal(signal.SIGTERM)
    with files.sigterm_raises_exit():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before

    import threading

    errors: list[BaseException] = []

    def _in_thread():
        try:
            with files.sigterm_raises_exit():
                pass
        except BaseException as e:  # pragma: no cover - the failure being tested for
            errors.append(e)

    t = threading.Thread(target=_in_thread)
    t.start()
    t.join()
    assert errors == []
    assert signal.getsignal(signal.SIGTERM) is before
