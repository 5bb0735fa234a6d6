"""The Fashion-MNIST IDX reader on small IDX files written here, the model-space mapping, and (only
when present) the real files."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from amed_deploy.data import (
    CLASS_NAMES,
    DEFAULT_FOLDER,
    from_model_space,
    load_fashion_mnist,
    load_idx_images,
    load_idx_labels,
    pad_images,
    to_model_space,
)
from amed_deploy.errors import AmedError


def idx_images(images: np.ndarray, magic: int = 2051) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", magic, n, h, w) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray, magic: int = 2049) -> bytes:
    return struct.pack(">II", magic, len(labels)) + labels.astype(np.uint8).tobytes()


@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (7, 28, 28), dtype=np.uint8), np.arange(7, dtype=np.uint8) % 10


@pytest.mark.parametrize("compress", [False, True])
def test_reads_plain_and_gzip(tmp_path, small, compress):
    images, labels = small
    wrap = gzip.compress if compress else (lambda b: b)
    (tmp_path / "i").write_bytes(wrap(idx_images(images)))
    (tmp_path / "l").write_bytes(wrap(idx_labels(labels)))
    got = load_idx_images(tmp_path / "i")
    assert got.dtype == np.uint8 and got.shape == (7, 28, 28)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(load_idx_labels(tmp_path / "l"), labels)


def test_big_endian_header_non_square(tmp_path):
    images = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    (tmp_path / "i").write_bytes(idx_images(images))
    np.testing.assert_array_equal(load_idx_images(tmp_path / "i"), images)


@pytest.mark.parametrize(
    "payload, match",
    [
        (lambda im, lb: idx_labels(np.zeros(100)), "magic 2049"),  # a label file where images are expected
        (lambda im, lb: idx_images(im)[:-1], "header promises"),  # truncated
        (lambda im, lb: idx_images(im) + b"\0", "header promises"),  # trailing bytes
        (lambda im, lb: b"\0\0\x08", "too short"),
        (lambda im, lb: gzip.compress(idx_images(im))[:40], "gzip"),  # truncated gzip stream
    ],
)
def test_bad_image_files(tmp_path, small, payload, match):
    (tmp_path / "bad").write_bytes(payload(*small))
    with pytest.raises(AmedError, match=match):
        load_idx_images(tmp_path / "bad")


def test_bad_label_files(tmp_path, small):
    images, labels = small
    (tmp_path / "a").write_bytes(idx_images(images))
    with pytest.raises(AmedError, match="magic 2051"):
        load_idx_labels(tmp_path / "a")
    (tmp_path / "b").write_bytes(idx_labels(labels)[:-2])
    with pytest.raises(AmedError, match="header promises"):
        load_idx_labels(tmp_path / "b")
    with pytest.raises(AmedError, match="not found"):
        load_idx_labels(tmp_path / "missing")


def write_split(folder: Path, prefix: str, images, labels, gz: bool = True) -> None:
    suffix = ".gz" if gz else ""
    wrap = gzip.compress if gz else (lambda b: b)
    (folder / f"{prefix}-images-idx3-ubyte{suffix}").write_bytes(wrap(idx_images(images)))
    (folder / f"{prefix}-labels-idx1-ubyte{suffix}").write_bytes(wrap(idx_labels(labels)))


def test_load_fashion_mnist_folder(tmp_path, small):
    images, labels = small
    write_split(tmp_path, "train", images, labels)
    write_split(tmp_path, "t10k", images[:3], labels[:3], gz=False)  # plain files are found too
    im, lb = load_fashion_mnist(tmp_path)
    np.testing.assert_array_equal(im, images)
    np.testing.assert_array_equal(lb, labels)
    assert load_fashion_mnist(tmp_path, "test")[0].shape == (3, 28, 28)
    with pytest.raises(AmedError, match="split"):
        load_fashion_mnist(tmp_path, "val")
    with pytest.raises(AmedError, match="not found"):
        load_fashion_mnist(tmp_path / "nope")


def test_load_fashion_mnist_mismatch(tmp_path, small):
    images, labels = small
    write_split(tmp_path, "train", images, labels[:5])
    with pytest.raises(AmedError, match="7 train images but 5 labels"):
        load_fashion_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(AmedError, match="train-labels-idx1-ubyte"):
        load_fashion_mnist(tmp_path)


def test_bad_label_value(tmp_path, small):
    images, labels = small
    write_split(tmp_path, "train", images, np.full(7, 10, np.uint8))
    with pytest.raises(AmedError, match="out of range"):
        load_fashion_mnist(tmp_path)


def test_model_space_round_trip(small):
    images, _ = small
    x = to_model_space(images)
    assert x.dtype == torch.float32 and x.shape == (7, 1, 32, 32)
    assert x.min() >= -1 and x.max() <= 1
    # 2 px of background (0 -> -1) on every side, the image in the middle
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (x[:, 0][:, border] == -1).all()
    torch.testing.assert_close(x[:, 0, 2:30, 2:30], torch.from_numpy(images).float() / 127.5 - 1)
    back = from_model_space(x)
    assert back.dtype == torch.uint8 and back.shape == (7, 1, 32, 32)
    np.testing.assert_array_equal(back.numpy(), pad_images(images))
    np.testing.assert_array_equal(back[:, 0, 2:30, 2:30].numpy(), images)


def test_from_model_space_clamps_and_rounds():
    x = torch.tensor([-1.7, -1.0, -0.999, 0.0, 0.999, 1.0, 2.5])
    assert from_model_space(x).tolist() == [0, 0, 0, 128, 255, 255, 255]  # 127.5 rounds half to even: 128


def test_class_names():
    assert len(CLASS_NAMES) == 10 and CLASS_NAMES[0] == "T-shirt/top" and CLASS_NAMES[9] == "Ankle boot"


def _real_folder() -> Path | None:
    for folder in (Path(os.environ.get("AMED_FASHION_MNIST", DEFAULT_FOLDER)), Path(DEFAULT_FOLDER)):
        if (folder / "t10k-images-idx3-ubyte.gz").is_file():
            return folder
    return None


@pytest.mark.skipif(
    _real_folder() is None,
    reason=f"Fashion-MNIST IDX files not found: apt install dataset-fashion-mnist (files in {DEFAULT_FOLDER}), "
    "or set AMED_FASHION_MNIST to a folder holding t10k-images-idx3-ubyte.gz",
)
def test_real_files():
    images, labels = load_fashion_mnist(_real_folder(), "test")  # the small split: fast
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [1000] * 10
    assert 60 < images.mean() < 80  # Fashion-MNIST's mean intensity is about 72.9
