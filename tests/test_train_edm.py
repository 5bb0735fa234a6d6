"""The trainer: EDM loss, resumable state (a split run equals an uninterrupted one, x-flips included),
the dataset a run is bound to, outputs, and `train-edm` on a CIFAR-10 zip."""

from __future__ import annotations

import pytest
import torch

from amed_deploy.checkpoint.build import build_model
from amed_deploy.checkpoint.load import load_checkpoint
from amed_deploy.errors import AmedError
from amed_deploy.train_edm import TrainConfig, _ema_beta, train, xflip_batch

CFG = TrainConfig(
    model_channels=8,
    channel_mult=(1, 1),
    num_blocks=1,
    attn_resolutions=(),
    dropout=0.0,
    batch=8,
    lr=1e-3,
    lr_rampup_kimg=0.01,
)


def _data():
    g = torch.Generator().manual_seed(0)
    classes = torch.randint(3, (32,), generator=g)
    # structured data (a class-dependent level plus a little noise) that a denoiser can learn fast
    images = (classes.float() - 1).reshape(-1, 1, 1, 1) * 0.6 + 0.05 * torch.randn(32, 1, 16, 16, generator=g)
    return images, torch.nn.functional.one_hot(classes, 3).float()


def test_resumed_training_equals_uninterrupted(tmp_path):
    images, labels = _data()
    whole = train(images, labels, tmp_path / "a", CFG, minutes=5, total_kimg=0.032, device="cpu", progress=False)
    train(images, labels, tmp_path / "b", CFG, minutes=5, total_kimg=0.016, device="cpu", progress=False)
    split = train(images, labels, tmp_path / "b", CFG, minutes=5, total_kimg=0.032, device="cpu", progress=False)
    assert whole["nimg"] == split["nimg"] == 32 and whole["steps"] == split["steps"] == 4
    # fewer than 50 steps still report their loss; a call with nothing left to train reports none
    assert whole["recent_loss"] > 0 and split["recent_loss"] > 0
    done = train(images, labels, tmp_path / "a", CFG, minutes=5, total_kimg=0.032, device="cpu", progress=False)
    assert done["steps"] == 4 and done["recent_loss"] is None
    a = load_checkpoint(tmp_path / "a" / "edm.pt").state_dict
    b = load_checkpoint(tmp_path / "b" / "edm.pt").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
    net = build_model(load_checkpoint(tmp_path / "b" / "edm-fp16.safetensors"))
    assert net.label_dim == 3 and net.img_resolution == 16
    for k, v in net.state_dict().items():  # the fp16 export is the same weights, rounded
        torch.testing.assert_close(v, a[k], rtol=1e-3, atol=1e-4)


def test_training_reduces_the_loss_and_ema_ramps(tmp_path):
    from amed_deploy.train_edm import edm_loss

    images, labels = _data()
    cfg = TrainConfig(**{**CFG.__dict__, "batch": 32})
    out = tmp_path / "c"
    train(images, labels, out, cfg, 5, 0.032, "cpu", progress=False)
    before = build_model(load_checkpoint(out / "edm.pt"))
    train(images, labels, out, cfg, 5, 1.6, "cpu", progress=False)
    after = build_model(load_checkpoint(out / "edm.pt"))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        l0 = sum(edm_loss(before, images, labels, cfg, gen.manual_seed(i)).item() for i in range(8))
        l1 = sum(edm_loss(after, images, labels, cfg, gen.manual_seed(i)).item() for i in range(8))
    assert l1 < 0.8 * l0, (l0, l1)
    # EMA half-life ramps with the images seen, then saturates at ema_halflife_kimg
    assert _ema_beta(CFG, 80) < _ema_beta(CFG, 8000) < _ema_beta(CFG, 10**9) < 1


def _rgb_data():
    """RGB images whose left and right halves differ (a mirrored image is a different input)."""
    g = torch.Generator().manual_seed(0)
    classes = torch.randint(3, (32,), generator=g)
    ramp = torch.linspace(-0.8, 0.8, 16).expand(3, 16, 16) * torch.tensor([1.0, -0.5, 0.25])[:, None, None]
    images = ramp * (classes.float() - 1).reshape(-1, 1, 1, 1) + 0.05 * torch.randn(32, 3, 16, 16, generator=g)
    return images, torch.nn.functional.one_hot(classes, 3).float()


def test_compile_trains_through_the_compiled_network_and_saves_its_weights(tmp_path, monkeypatch):
    """With compile, every loss goes through what torch.compile returned (a stand-in here that counts its
    calls: compiling takes minutes on a CPU), and the run equals one without it."""
    calls = []

    def fake_compile(module):
        calls.append(module)
        return lambda *args: (calls.append("call"), module(*args))[1]

    images, labels = _data()
    plain = train(images, labels, tmp_path / "a", CFG, minutes=5, total_kimg=0.032, device="cpu", progress=False)
    monkeypatch.setattr(torch, "compile", fake_compile)
    fast = train(images, labels, tmp_path / "b", CFG, 5, 0.032, "cpu", progress=False, compile=True)
    assert isinstance(calls[0], torch.nn.Module) and calls[1:] == ["call"] * fast["steps"] == ["call"] * 4
    a, b = (load_checkpoint(tmp_path / run / "edm.pt").state_dict for run in ("a", "b"))
    assert plain["nimg"] == fast["nimg"] and all(torch.equal(a[k], b[k]) for k in a)


def test_xflip_batch_is_seeded_and_mirrors_about_half():
    images = torch.randn(400, 3, 4, 4)
    a = xflip_batch(images, torch.Generator().manual_seed(7))
    assert torch.equal(a, xflip_batch(images, torch.Generator().manual_seed(7)))  # same seed, same flips
    assert not torch.equal(a, xflip_batch(images, torch.Generator().manual_seed(8)))
    flipped = (a == images.flip(-1)).flatten(1).all(1)
    kept = (a == images).flatten(1).all(1)
    assert bool((flipped ^ kept).all())  # each image is itself or its mirror, whole
    assert 150 < int(flipped.sum()) < 250


def test_resumed_rgb_training_with_xflip_equals_uninterrupted(tmp_path):
    images, labels = _rgb_data()
    cfg = TrainConfig(**{**CFG.__dict__, "xflip": True})
    kw = dict(minutes=5, device="cpu", progress=False, dataset="cifar10")
    train(images, labels, tmp_path / "a", cfg, total_kimg=0.032, **kw)
    train(images, labels, tmp_path / "b", cfg, total_kimg=0.016, **kw)
    train(images, labels, tmp_path / "b", cfg, total_kimg=0.032, **kw)
    train(images, labels, tmp_path / "c", CFG, total_kimg=0.032, **kw)  # the same run without flips
    a, b, c = (load_checkpoint(tmp_path / run / "edm.pt") for run in "abc")
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert not all(torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)  # the flips took effect
    assert a.network_kwargs["img_channels"] == 3
    assert b.metadata["training"]["dataset"] == "cifar10" and b.metadata["training"]["config"]["xflip"] is True


def test_a_run_resumes_only_on_its_own_dataset(tmp_path):
    images, labels = _data()
    kw = dict(minutes=5, device="cpu", progress=False)
    train(images, labels, tmp_path / "r", CFG, total_kimg=0.008, dataset="cifar10", **kw)
    with pytest.raises(AmedError, match=r"train-state.pt is a run on cifar10, not fashion-mnist; resume it with"):
        train(images, labels, tmp_path / "r", CFG, total_kimg=0.016, dataset="fashion-mnist", **kw)
    # a state file written before datasets were recorded resumes as before
    state_path = tmp_path / "r" / "train-state.pt"
    state = torch.load(state_path, weights_only=True)
    del state["dataset"]
    torch.save(state, state_path)
    assert train(images, labels, tmp_path / "r", CFG, total_kimg=0.016, dataset="fashion-mnist", **kw)["steps"] == 2


def test_train_edm_command_on_a_cifar_zip(tmp_path, monkeypatch):
    import numpy as np
    from click.testing import CliRunner
    from conftest import write_cifar_zip
    from test_data import write_split

    from amed_deploy.cli import main

    data = write_cifar_zip(tmp_path / "c.zip", train=1)
    out = tmp_path / "run"
    tiny = ["--channels", "8", "--channel-mult", "1", "--blocks", "1", "--batch", "4", "--kimg", "0.004"]
    args = ["train-edm", "--data", str(data), "--out", str(out), *tiny, "--device", "cpu"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "on CIFAR-10" in r.output
    ckpt = load_checkpoint(out / "edm.pt")
    assert (ckpt.network_kwargs["img_channels"], ckpt.network_kwargs["label_dim"]) == (3, 10)
    training = ckpt.metadata["training"]
    assert training["dataset"] == "cifar10" and training["config"]["xflip"] is True  # the dataset's default
    # the same run folder with other data: one error line
    (tmp_path / "fashion").mkdir()
    write_split(tmp_path / "fashion", "train", np.zeros((4, 28, 28), np.uint8), np.arange(4, dtype=np.uint8))
    r = CliRunner().invoke(main, [*args[:2], str(tmp_path / "fashion"), *args[3:]])
    assert r.exit_code == 2 and "error: " in r.output and "is a run on cifar10, not fashion-mnist" in r.output
    # --no-xflip, --ema-halflife, --compile and --dataset reach the trainer
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or module)
    args = ["train-edm", "--data", str(data), "--dataset", "cifar10", "--out", str(tmp_path / "r2"), *tiny]
    r = CliRunner().invoke(main, [*args, "--no-xflip", "--ema-halflife", "500", "--compile", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert len(compiled) == 1
    config = load_checkpoint(tmp_path / "r2" / "edm.pt").metadata["training"]["config"]
    assert config["xflip"] is False and config["ema_halflife_kimg"] == 500.0
    assert training["config"]["ema_halflife_kimg"] == 50.0  # the default: the bundled model's
