"""What a command may write, decided before any work starts: the file type its name promises, never
over an input of the same call, never two outputs on one file, and an existing file only with --force.

The final write repeats the existence check atomically (`files` with overwrite=False), so a file
that appears while a long command runs is not replaced either."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .errors import AmedError
from .files import check_target

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
GENERATE_FORMATS = ("png", "npz")  # `generate`: one PNG per seed, or .npz shards
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")


def check_suffix(path: Path, allowed: Sequence[str], option: str) -> str:
    """The lower-case suffix of `path`, refused unless it is one of `allowed` (case-insensitive)."""
    suffix = path.suffix.lower()
    if suffix not in allowed:
        names = " or ".join(allowed)
        raise AmedError(f"{option} {path}: the name must end in {names}, so the file is what its name says")
    return suffix


def same_file(a: Path, b: Path) -> bool:
    """Whether two names reach one file (symlinks, hard links and relative spellings included)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def plan_outputs(outputs: Mapping[str, Path | None], inputs: Iterable[Path | None], force: bool) -> None:
    """Refuse, before any work, every write that could lose data.

    `outputs` maps an option name (for messages) to the path it writes; `inputs` are the files the
    same call reads. An input is never overwritten, even with --force."""
    chosen = [(opt, Path(p)) for opt, p in outputs.items() if p is not None]
    sources = [Path(p) for p in inputs if p is not None]
    for i, (opt, path) in enumerate(chosen):
        for src in sources:
            if same_file(path, src):
                raise AmedError(f"{opt} {path} is an input of this command; write the result to another file")
        for other_opt, other in chosen[:i]:
            if same_file(path, other):
                raise AmedError(f"{opt} and {other_opt} both name {path}; give them different files")
        check_target(path, overwrite=force)  # a directory, an existing file without --force, a write-protected one
