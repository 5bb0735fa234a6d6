"""Fashion-MNIST, read from its original IDX files, and the mapping between its 28x28 uint8 images
and the model's 32x32 [-1, 1] space. FID compares samples with training images in the same 32x32
padded geometry, so both directions live here.

IDX: a big-endian header (magic 2051 + count, rows, cols for images; magic 2049 + count for labels),
then raw uint8 values. Files may be gzip-compressed (the distributed form) or plain.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import AmedError

DEFAULT_FOLDER = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
SPLITS = {"train": "train", "test": "t10k"}
MODEL_SIZE = 32  # 28x28 padded by 2 px of background on every side


def _read(path: str | os.PathLike) -> bytes:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise AmedError(f"IDX file not found: {path}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise AmedError(f"{path}: corrupt or truncated gzip data ({e})") from None
    return raw


def _header(data: bytes, path: str | os.PathLike, magic: int, ndim: int) -> tuple[int, ...]:
    size = 4 * (1 + ndim)
    if len(data) < size:
        raise AmedError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    fields = tuple(int(v) for v in np.frombuffer(data[:size], dtype=">u4"))
    if fields[0] != magic:
        kind = "images" if magic == IMAGES_MAGIC else "labels"
        raise AmedError(f"{path}: not an IDX {kind} file (magic {fields[0]}, expected {magic})")
    dims = fields[1:]
    expected = size + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise AmedError(f"{path}: header promises {expected - size} values {dims}, file holds {len(data) - size}")
    return dims


def load_idx_images(path: str | os.PathLike) -> np.ndarray:
    """uint8 [N, rows, cols] from an IDX3 file (gzip or plain), with its header checked against its size."""
    data = _read(path)
    n, rows, cols = _header(data, path, IMAGES_MAGIC, 3)
    if rows < 1 or cols < 1:
        raise AmedError(f"{path}: images of size {rows}x{cols}")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols).copy()


def load_idx_labels(path: str | os.PathLike) -> np.ndarray:
    """uint8 [N] from an IDX1 file (gzip or plain)."""
    data = _read(path)
    _header(data, path, LABELS_MAGIC, 1)
    return np.frombuffer(data, dtype=np.uint8, offset=8).copy()


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise AmedError(
        f"{folder} has no {stem}.gz (or {stem}); point --data at a folder with the Fashion-MNIST IDX files "
        f"(Debian: apt-get install dataset-fashion-mnist -> {DEFAULT_FOLDER})"
    )


def load_fashion_mnist(
    folder: str | os.PathLike = DEFAULT_FOLDER, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N,28,28], labels uint8 [N]) of one split: 'train' (60k) or 'test' (10k)."""
    if split not in SPLITS:
        raise AmedError(f"unknown split {split!r}; choose train or test")
    folder = Path(folder)
    if not folder.is_dir():
        raise AmedError(f"dataset folder not found: {folder}")
    prefix = SPLITS[split]
    images = load_idx_images(_find(folder, f"{prefix}-images-idx3-ubyte"))
    labels = load_idx_labels(_find(folder, f"{prefix}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise AmedError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
    if len(labels) and int(labels.max()) >= len(CLASS_NAMES):
        raise AmedError(f"{folder}: label {int(labels.max())} is out of range 0..{len(CLASS_NAMES) - 1}")
    return images, labels


def pad_images(images: np.ndarray, size: int = MODEL_SIZE) -> np.ndarray:
    """uint8 [N,H,W] (or [N,1,H,W]) -> uint8 [N,1,size,size], centred on background (0)."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or images.dtype != np.uint8:
        raise AmedError(f"expected uint8 images [N,H,W], got {images.dtype} {tuple(images.shape)}")
    _, h, w = images.shape
    if h > size or w > size:
        raise AmedError(f"images of {h}x{w} do not fit in {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((len(images), 1, size, size), dtype=np.uint8)
    out[:, 0, top : top + h, left : left + w] = images
    return out


def to_model_space(images: np.ndarray) -> Tensor:
    """uint8 [N,28,28] -> float32 [N,1,32,32] in [-1, 1] (pad 2 px of background, then x/127.5 - 1)."""
    return torch.from_numpy(pad_images(images)).float() / 127.5 - 1


def from_model_space(x: Tensor) -> Tensor:
    """Model-space images (any shape, about [-1, 1]) -> uint8 of the same shape, clamped and rounded:
    the quantisation a saved PNG has, which is what FID is computed on."""
    return ((x.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
