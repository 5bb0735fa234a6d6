"""The trainer: EDM loss, resumable state (a split run equals an uninterrupted one), outputs."""

from __future__ import annotations

import torch

from amed_deploy.checkpoint.build import build_model
from amed_deploy.checkpoint.load import load_checkpoint
from amed_deploy.train_edm import TrainConfig, _ema_beta, train

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
