"""The two datasets behind train-edm and eval: telling them apart by path, the override, their model
geometry, and eval's FID reference statistics from each (checked against the model's image shape)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from conftest import cifar_colour, write_cifar_zip
from test_data import idx_images, idx_labels

from amed_deploy.datasets import DATASETS, detect, resolve
from amed_deploy.errors import AmedError
from amed_deploy.evaluation.quality import prepare_fid

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def write_fashion_mnist(folder, n: int = 5):
    folder.mkdir(exist_ok=True)
    images = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_images(images)))
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_labels(np.arange(n) % 10)))
    return images


def test_detect_and_override(tmp_path):
    assert detect(tmp_path / "cifar10-jpeg-q75.zip").name == "cifar10"  # by suffix, even before it exists
    assert detect(tmp_path / "DATA.ZIP").name == "cifar10"
    assert detect(tmp_path).name == "fashion-mnist"
    assert detect(tmp_path / "not-yet-installed").name == "fashion-mnist"  # the loader then says it is missing
    (tmp_path / "images.tar").write_bytes(b"")
    with pytest.raises(AmedError, match="cannot tell which dataset .*images.tar.*--dataset"):
        detect(tmp_path / "images.tar")
    assert resolve(tmp_path / "images.tar", "cifar10").name == "cifar10"  # the override wins
    assert resolve(tmp_path / "x.zip", "fashion-mnist").name == "fashion-mnist"
    assert resolve(tmp_path, "auto").name == "fashion-mnist"
    with pytest.raises(AmedError, match="unknown dataset 'mnist'"):
        resolve(tmp_path, "mnist")


def test_descriptions():
    fm, cifar = DATASETS["fashion-mnist"], DATASETS["cifar10"]
    assert (fm.image_shape, len(fm.class_names), fm.xflip) == ((1, 32, 32), 10, False)
    assert (cifar.image_shape, cifar.class_names[0], cifar.class_names[9], cifar.xflip) == (
        (3, 32, 32),
        "airplane",
        "truck",
        True,
    )
    assert fm.describe("/x/fm", "train", 60000) == "Fashion-MNIST train (60000), padded to 32x32"
    assert cifar.describe("/x/c10.zip", "train", 50000) == "CIFAR-10 JPEG train (50000) from c10.zip"


def test_load_in_model_geometry(tmp_path):
    raw = write_fashion_mnist(tmp_path / "fm")
    images, labels = DATASETS["fashion-mnist"].load(tmp_path / "fm", "train")
    assert images.shape == (5, 1, 32, 32) and labels.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(images[:, 0, 2:30, 2:30], raw)  # padded 28 -> 32 on background
    assert images[:, :, :2].max() == 0
    images, labels = DATASETS["cifar10"].load(write_cifar_zip(tmp_path / "c.zip"), "test")
    assert images.shape == (10, 3, 32, 32) and labels.tolist() == list(range(10))


class ChannelMeans(torch.nn.Module):
    """A stand-in Inception (fid-helper's convention): features 0..2 are the mean of each input channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.zeros(x.shape[0], 2048)
        f[:, :3] = x.mean(dim=(2, 3))
        return f


@pytest.fixture
def stand_in(tmp_path):
    path = tmp_path / "inception.pt"
    torch.jit.script(ChannelMeans()).save(str(path))
    return path


def test_fid_reference_from_cifar_is_rgb(tmp_path, stand_in):
    zip_path = write_cifar_zip(tmp_path / "c.zip", train=2)
    _, (mu, _), info = prepare_fid(zip_path, stand_in, (3, 32, 32), progress=False)
    assert info["reference_images"] == "CIFAR-10 JPEG train (20) from c.zip"
    # the network saw the three colour channels, not one replicated: per-channel means, (p - 128) / 128
    colours = np.array([cifar_colour("train", c, i) for c in range(10) for i in range(2)], dtype=np.float64)
    np.testing.assert_allclose(mu[:3], (colours.mean(axis=0) - 128) / 128, atol=3 / 128)
    assert len({round(v, 2) for v in mu[:3]}) == 3


def test_fid_reference_from_fashion_mnist(tmp_path, stand_in):
    raw = write_fashion_mnist(tmp_path / "fm", n=6)
    _, (mu, _), info = prepare_fid(tmp_path / "fm", stand_in, (1, 32, 32), progress=False)
    assert info["reference_images"] == "Fashion-MNIST train (6), padded to 32x32"
    padded_mean = raw.astype(np.float64).sum() / (6 * 32 * 32)  # 2 px of background (0) around 28x28
    assert mu[0] == mu[1] == mu[2]  # grayscale, replicated
    np.testing.assert_allclose(mu[0], (padded_mean - 128) / 128, atol=1e-3)  # (the 299x299 resize moves it a little)


def test_fid_refuses_a_model_of_another_shape(tmp_path):
    zip_path = write_cifar_zip(tmp_path / "c.zip")
    # checked before anything is loaded: the Inception file does not even exist here
    with pytest.raises(AmedError, match="the model makes 1x32x32 images; CIFAR-10 FID needs 3x32x32"):
        prepare_fid(zip_path, tmp_path / "none.pt", (1, 32, 32))
    with pytest.raises(AmedError, match="the model makes 3x32x32 images; Fashion-MNIST FID needs 1x32x32"):
        prepare_fid(zip_path, tmp_path / "none.pt", (3, 32, 32), dataset="fashion-mnist")


def test_eval_takes_a_zip_and_checks_the_model_against_it(tmp_path, tiny_ckpt, stand_in):
    from click.testing import CliRunner

    from amed_deploy.cli import main

    zip_path = write_cifar_zip(tmp_path / "c.zip")
    args = ["eval", "--ckpt", str(tiny_ckpt), "--inception", str(stand_in), "--data", str(zip_path)]
    args += ["--out", str(tmp_path / "r.json"), "--device", "cpu"]
    r = CliRunner().invoke(main, args)  # the tiny model makes 1x16x16 images
    assert r.exit_code == 2 and "error: the model makes 1x16x16 images; CIFAR-10 FID needs 3x32x32" in r.output
    r = CliRunner().invoke(main, [*args, "--dataset", "fashion-mnist"])
    assert r.exit_code == 2 and "Fashion-MNIST FID needs 1x32x32" in r.output
    assert not (tmp_path / "r.json").exists()
