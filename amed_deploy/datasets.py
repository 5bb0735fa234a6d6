"""The datasets train-edm trains on and eval's FID compares with, each described once: its classes,
the model geometry its images take, whether training mirrors them by default, and how to load a
split as uint8 [N,C,32,32] in that geometry (what the model sees, and what FID compares)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import cifar10, data
from .errors import AmedError


@dataclass(frozen=True)
class Dataset:
    """One dataset: what train-edm and eval need to know of it, whatever its file format."""

    name: str  # the --dataset value, recorded in checkpoints
    title: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # model geometry (C, H, W)
    xflip: bool  # default for train-edm's x-flip augmentation
    # load(path, split): (images uint8 [N,C,H,W] in model geometry, labels uint8 [N])
    load: Callable[[str | os.PathLike, str], tuple[np.ndarray, np.ndarray]]
    reference: str  # how eval's protocol record names the FID reference images

    def describe(self, path: str | os.PathLike, split: str, count: int) -> str:
        return self.reference.format(split=split, count=count, file=Path(path).name)


def _fashion_mnist(path: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = data.load_fashion_mnist(path, split)
    return data.pad_images(images), labels


DATASETS = {
    "fashion-mnist": Dataset(
        "fashion-mnist",
        "Fashion-MNIST",
        data.CLASS_NAMES,
        (1, data.MODEL_SIZE, data.MODEL_SIZE),
        False,  # the bundled model's recipe: no flips
        _fashion_mnist,
        "Fashion-MNIST {split} ({count}), padded to 32x32",
    ),
    "cifar10": Dataset(
        "cifar10",
        "CIFAR-10",
        cifar10.CLASS_NAMES,
        (3, cifar10.SIZE, cifar10.SIZE),
        True,  # EDM's CIFAR-10 recipe
        cifar10.load_cifar10_zip,
        "CIFAR-10 JPEG {split} ({count}) from {file}",
    ),
}


def detect(path: str | os.PathLike) -> Dataset:
    """The dataset a --data path holds: a .zip file is CIFAR-10, a folder (or a missing path, such as
    Debian's Fashion-MNIST folder before it is installed) is Fashion-MNIST's IDX files."""
    path = Path(path)
    if path.suffix.lower() == ".zip":
        return DATASETS["cifar10"]
    if path.is_dir() or not path.exists():
        return DATASETS["fashion-mnist"]
    raise AmedError(
        f"cannot tell which dataset {path} holds (a CIFAR-10 .zip or a Fashion-MNIST folder); pass --dataset"
    )


def resolve(path: str | os.PathLike, name: str = "auto") -> Dataset:
    """The dataset `name` ('auto': detected from the path)."""
    if name == "auto":
        return detect(path)
    if name not in DATASETS:
        raise AmedError(f"unknown dataset {name!r}; choose auto, {', '.join(DATASETS)}")
    return DATASETS[name]
