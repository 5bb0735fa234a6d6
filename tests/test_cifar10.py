"""The CIFAR-10 JPEG zip reader on small zips written here: order, labels, pixels, every refusal."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import cifar_colour, flat_jpeg, write_cifar_zip

from amed_deploy.cifar10 import CLASS_NAMES, load_cifar10_zip
from amed_deploy.errors import AmedError


@pytest.mark.parametrize("split, per_class", [("train", 3), ("test", 2)])
def test_reads_a_split_in_class_then_name_order(tmp_path, split, per_class):
    path = write_cifar_zip(tmp_path / "c.zip", train=3, test=2)  # written in reverse order
    images, labels = load_cifar10_zip(path, split, progress=False)
    assert images.dtype == np.uint8 and images.shape == (10 * per_class, 3, 32, 32)
    assert labels.dtype == np.uint8 and labels.tolist() == [c for c in range(10) for _ in range(per_class)]
    expect = np.array([cifar_colour(split, c, i) for c in range(10) for i in range(per_class)])
    # flat colours survive JPEG to within 3 levels (DC quantisation and YCbCr rounding); neighbours
    # differ by 15 or more, so this also pins which image landed where
    np.testing.assert_allclose(images.astype(int), np.broadcast_to(expect[:, :, None, None], images.shape), atol=3)


def test_members_sort_by_name_within_a_class(tmp_path):
    # 0010.jpg after 0002.jpg: names sort as strings, which for NNNN.jpg is numeric order
    members = {"train/cat/0010.jpg": flat_jpeg((250, 250, 250)), "train/cat/0002.jpg": flat_jpeg((0, 0, 0))}
    images, labels = load_cifar10_zip(write_cifar_zip(tmp_path / "c.zip", train=1, members=members), progress=False)
    cat = images[labels == CLASS_NAMES.index("cat")].mean(axis=(1, 2, 3))
    assert len(cat) == 3 and cat[1] < 5 and cat[2] > 245  # 0000, 0002, 0010


def test_split_and_file_errors(tmp_path):
    path = write_cifar_zip(tmp_path / "c.zip")
    with pytest.raises(AmedError, match="unknown split 'val'"):
        load_cifar10_zip(path, "val")
    with pytest.raises(AmedError, match="CIFAR-10 zip not found"):
        load_cifar10_zip(tmp_path / "missing.zip")
    (tmp_path / "text.zip").write_text("not a zip")
    with pytest.raises(AmedError, match="is not a zip file"):
        load_cifar10_zip(tmp_path / "text.zip")


@pytest.mark.parametrize(
    "members, match",
    [
        ({"README.txt": b"hi"}, r"unexpected member 'README.txt'"),
        ({"cifar10/train/cat/0000.jpg": flat_jpeg((1, 2, 3))}, r"unexpected member 'cifar10/train/cat/0000.jpg'"),
        ({"train/cat/0000.png": flat_jpeg((1, 2, 3))}, r"unexpected member 'train/cat/0000.png'"),
        ({"train/kitten/0000.jpg": flat_jpeg((1, 2, 3))}, r"unknown class folder train/kitten/"),
        ({"train/truck/0000.jpg": None, "train/truck/0001.jpg": None}, r"no train images of class truck"),
        ({"train/dog/0001.jpg": flat_jpeg((1, 2, 3), size=16)}, r"train/dog/0001.jpg is a 16x16 RGB image, not 32x32"),
        ({"train/dog/0001.jpg": flat_jpeg((9,), mode="L")}, r"train/dog/0001.jpg is a 32x32 L image, not 32x32 RGB"),
        ({"train/frog/0001.jpg": flat_jpeg((1, 2, 3))[:200]}, r"train/frog/0001.jpg is not a readable JPEG"),
        ({"train/frog/0001.jpg": b"\x89PNG\r\n\x1a\n" + bytes(64)}, r"train/frog/0001.jpg is not a readable JPEG"),
    ],
)
def test_layout_and_image_errors_name_the_member(tmp_path, members, match):
    path = write_cifar_zip(tmp_path / "c.zip", members=members)
    with pytest.raises(AmedError, match=match):
        load_cifar10_zip(path, "train", progress=False)


def test_a_bad_member_of_the_other_split_is_not_decoded(tmp_path):
    # the layout is checked for the whole zip, but only the asked-for split's images are decoded
    path = write_cifar_zip(tmp_path / "c.zip", members={"test/frog/0000.jpg": b"garbage"})
    assert load_cifar10_zip(path, "train", progress=False)[0].shape == (20, 3, 32, 32)
    with pytest.raises(AmedError, match="test/frog/0000.jpg is not a readable JPEG"):
        load_cifar10_zip(path, "test", progress=False)
