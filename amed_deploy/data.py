"""Fashion-MNIST from its IDX files (gzip or plain), and the model's 32x32 [-1, 1] image space."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import AmedError

DEFAULT_FOLDER = "/usr/share/datasets/fashion-mnist"
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


def _read(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:
        raise AmedError(f"cannot read {path}: {e}") from None


def load_idx_images(path: str | os.PathLike) -> np.ndarray:
    data = _read(Path(path))
    if len(data) < 16 or struct.unpack(">I", data[:4])[0] != 2051:
        raise AmedError(f"{path} is not an IDX image file (magic 2051)")
    n, h, w = struct.unpack(">III", data[4:16])
    if len(data) != 16 + n * h * w:
        raise AmedError(f"{path}: expected {n}x{h}x{w} pixels, file has {len(data) - 16} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, h, w)


def load_idx_labels(path: str | os.PathLike) -> np.ndarray:
    data = _read(Path(path))
    if len(data) < 8 or struct.unpack(">I", data[:4])[0] != 2049:
        raise AmedError(f"{path} is not an IDX label file (magic 2049)")
    (n,) = struct.unpack(">I", data[4:8])
    if len(data) != 8 + n:
        raise AmedError(f"{path}: expected {n} labels, file has {len(data) - 8} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=8)


def load_fashion_mnist(
    folder: str | os.PathLike = DEFAULT_FOLDER, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise AmedError(f"split must be train or test, got {split!r}")
    folder = Path(folder)

    def find(stem: str) -> Path:
        for name in (f"{stem}.gz", stem):
            if (folder / name).exists():
                return folder / name
        raise AmedError(f"{folder / stem}[.gz] not found (apt-get install dataset-fashion-mnist, or pass --data)")

    images = load_idx_images(find(f"{prefix}-images-idx3-ubyte"))
    labels = load_idx_labels(find(f"{prefix}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise AmedError(f"{folder}: {len(images)} images but {len(labels)} labels")
    return images, labels


def to_model_space(images: np.ndarray) -> Tensor:
    """uint8 [N,28,28] -> float32 [N,1,32,32] in [-1,1], padded with background."""
    x = torch.tensor(np.asarray(images), dtype=torch.float32)[:, None]
    x = torch.nn.functional.pad(x, (2, 2, 2, 2))
    return x / 127.5 - 1


def from_model_space(x: Tensor) -> Tensor:
    """float [N,1,32,32] in [-1,1] -> uint8."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
