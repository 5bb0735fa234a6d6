"""Shared fixtures: a tiny random EDM network saved as a checkpoint, a predictor distilled for it,
and graphs exported from both. Session-scoped: distillation and export are the slow parts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from amed_deploy.checkpoint.format import Checkpoint, model_sha256, save_checkpoint
from amed_deploy.checkpoint.load import load_checkpoint
from amed_deploy.distill import DistillConfig, distill
from amed_deploy.files import file_sha256
from amed_deploy.networks import build_network, randomize_
from amed_deploy.predictor_file import PredictorBundle, save_predictor

# 16x16 grayscale, 3 classes, attention at 8x8: small enough for CPU tests, every block type present.
TINY_KWARGS = dict(
    img_resolution=16,
    img_channels=1,
    label_dim=3,
    model_type="SongUNet",
    model_channels=16,
    channel_mult=[1, 1],
    num_blocks=1,
    attn_resolutions=[8],
    dropout=0.0,
)
# a few hundred optimiser steps (60 batches x 3 intervals)
TINY_DISTILL = DistillConfig(batch=8, kimg=0.48, lr=5e-3, seed=0)


def need_ort_cuda() -> None:
    """Skip a test that runs ONNX Runtime's CUDA provider where it is not installed."""
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu with a CUDA provider is not installed (pip install onnxruntime-gpu)")


def tiny_net(seed: int = 0) -> torch.nn.Module:
    """Randomised (not EDM's near-zero output init) so every layer matters in parity tests."""
    return randomize_(build_network("EDMPrecond", dict(TINY_KWARGS)), seed, scale=0.5).eval()


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("amed")


@pytest.fixture(scope="session")
def tiny_ckpt(workdir) -> Path:
    net = tiny_net()
    path = workdir / "edm.pt"
    save_checkpoint(Checkpoint("EDMPrecond", dict(TINY_KWARGS), net.state_dict(), {"note": "test"}), path)
    return path


@pytest.fixture(scope="session")
def distilled(workdir, tiny_ckpt):
    """(network with trained predictor, sampler config, losses, predictor path)."""
    from amed_deploy.checkpoint.build import build_model

    ckpt = load_checkpoint(tiny_ckpt)
    net = build_model(ckpt)
    network, sampler, losses = distill(net, TINY_DISTILL, progress=False)
    path = workdir / "amed5.pt"
    sha = model_sha256(ckpt)
    bundle = PredictorBundle(network.predictor, sampler, network.tap, file_sha256(tiny_ckpt), model_sha256=sha)
    save_predictor(path, bundle)
    return network, sampler, losses, path


@pytest.fixture(scope="session")
def amed_onnx(workdir, tiny_ckpt, distilled) -> Path:
    """fp32 AMED graph with a dynamic batch 1..8."""
    from exporters.onnx_export import export_onnx

    network, sampler, _, pred_path = distilled
    out = workdir / "amed5.onnx"
    export_onnx(
        network,
        out,
        sampler=sampler,
        batch=4,
        batch_range=(1, 8),
        checkpoint_sha256=model_sha256(load_checkpoint(tiny_ckpt)),
        predictor_sha256=file_sha256(pred_path),
    )
    return out


@pytest.fixture(scope="session")
def epd_predictor(workdir, tiny_ckpt) -> Path:
    """An EPD-Solver table for the tiny checkpoint (NFE 5), after two batches of the published recipe."""
    from amed_deploy.checkpoint.build import build_model

    ckpt = load_checkpoint(tiny_ckpt)
    cfg = DistillConfig.for_student("epd", nfe=5, batch=4, kimg=0.008, teacher_m=1, teacher_inner=1)
    network, sampler, _ = distill(build_model(ckpt), cfg, progress=False)
    path = workdir / "epd5.pt"
    bundle = PredictorBundle(network.predictor, sampler, None, file_sha256(tiny_ckpt), model_sha256=model_sha256(ckpt))
    save_predictor(path, bundle)
    return path


def flat_jpeg(rgb: tuple[int, ...], size: int = 32, mode: str = "RGB") -> bytes:
    """A one-colour JPEG at quality 75: it decodes to within a few levels of its colour."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (size, size), rgb if mode == "RGB" else rgb[0]).save(buf, "JPEG", quality=75)
    return buf.getvalue()


def cifar_colour(split: str, label: int, index: int) -> tuple[int, int, int]:
    """The colour of image `index` of class `label` in a zip from write_cifar_zip (distinct per image)."""
    return 25 * label + 5, 40 * index + (140 if split == "test" else 20), 200 - 15 * label


def write_cifar_zip(path: Path, train: int = 2, test: int = 1, members: dict | None = None) -> Path:
    """A CIFAR-10 JPEG zip of flat-colour images (`train`/`test` per class), stored uncompressed like
    the real one and written in reverse order (the reader must sort). `members` adds or replaces
    members by name (bytes; None removes one)."""
    import zipfile

    from amed_deploy.cifar10 import CLASS_NAMES

    files = {
        f"{split}/{name}/{i:04d}.jpg": flat_jpeg(cifar_colour(split, c, i))
        for split, n in (("train", train), ("test", test))
        for c, name in enumerate(CLASS_NAMES)
        for i in range(n)
    }
    files.update(members or {})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, payload in reversed(files.items()):
            if payload is not None:
                zf.writestr(name, payload)
    return path
