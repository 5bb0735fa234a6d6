"""CIFAR-10 read from a zip of JPEGs: members `train/<class>/NNNN.jpg` and `test/<class>/NNNN.jpg`,
32x32 RGB. The zip is read into memory (63 MB at quality 75) and every image decoded with Pillow
(50k images are 150 MB); the order is fixed (class, then member name) so the same zip always gives
the same arrays and so the same FID statistics."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .errors import AmedError

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
SIZE = 32
LAYOUT = "train/<class>/NNNN.jpg and test/<class>/NNNN.jpg"


def _members(zf: zipfile.ZipFile, path: Path, split: str) -> list[tuple[int, str]]:
    """(label, member name) of every image of `split`, sorted by label then name; layout checked."""
    found = []
    for name in zf.namelist():
        if name.endswith("/"):
            continue  # folder entries
        parts = name.split("/")
        if len(parts) != 3 or parts[0] not in SPLITS or not parts[2].lower().endswith((".jpg", ".jpeg")):
            raise AmedError(f"{path}: unexpected member {name!r}; a CIFAR-10 JPEG zip holds only {LAYOUT}")
        if parts[1] not in CLASS_NAMES:
            raise AmedError(f"{path}: unknown class folder {parts[0]}/{parts[1]}/; expected {', '.join(CLASS_NAMES)}")
        if parts[0] == split:
            found.append((CLASS_NAMES.index(parts[1]), name))
    missing = [c for i, c in enumerate(CLASS_NAMES) if i not in {label for label, _ in found}]
    if missing:
        raise AmedError(f"{path}: no {split} images of class {', '.join(missing)}; expected {LAYOUT}")
    return sorted(found)


def _decode(zf: zipfile.ZipFile, path: Path, name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(zf.read(name)), formats=["JPEG"]) as im:
            if im.mode != "RGB" or im.size != (SIZE, SIZE):
                raise AmedError(f"{path}: {name} is a {im.size[0]}x{im.size[1]} {im.mode} image, not {SIZE}x{SIZE} RGB")
            return np.frombuffer(im.tobytes(), np.uint8).reshape(SIZE, SIZE, 3)  # tobytes decodes
    except (OSError, SyntaxError, ValueError, zipfile.BadZipFile) as e:
        raise AmedError(f"{path}: {name} is not a readable JPEG ({e})") from None


def load_cifar10_zip(
    path: str | os.PathLike, split: str = "train", progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N,3,32,32], labels uint8 [N]) of one split: 'train' (50k) or 'test' (10k).
    A progress bar appears when decoding takes more than a second."""
    if split not in SPLITS:
        raise AmedError(f"unknown split {split!r}; choose train or test")
    path = Path(path)
    if not path.is_file():
        raise AmedError(f"CIFAR-10 zip not found: {path}")
    try:
        zf = zipfile.ZipFile(io.BytesIO(path.read_bytes()))  # in memory: 50k member reads without file seeks
    except zipfile.BadZipFile:
        raise AmedError(f"{path} is not a zip file (expected a CIFAR-10 JPEG zip holding {LAYOUT})") from None
    with zf:
        members = _members(zf, path, split)
        images = np.empty((len(members), SIZE, SIZE, 3), dtype=np.uint8)
        bar = tqdm(members, desc=f"decode {path.name} {split}", unit="img", delay=1, disable=not progress)
        for i, (_, name) in enumerate(bar):
            images[i] = _decode(zf, path, name)
    labels = np.array([label for label, _ in members], dtype=np.uint8)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels
