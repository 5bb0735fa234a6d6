"""g_phi: shapes, ranges, initialisation, taps, and the predictor file."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_net

from amed_deploy.amed_network import AMEDNetwork, TorchModel, check_tap, default_tap
from amed_deploy.config import SamplerConfig
from amed_deploy.errors import AmedError
from amed_deploy.networks import CIFAR10_KWARGS, build_network
from amed_deploy.predictor import AMEDPredictor, PredictorConfig, parameter_count
from amed_deploy.predictor_file import PredictorBundle, load_predictor, save_predictor


def _inputs(batch=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(batch, 32, 8, 8, generator=g) * 3
    t = torch.exp(torch.empty(batch).uniform_(-5, 4, generator=g))
    return feat, t, t * 0.3


@pytest.mark.parametrize("scale_dir,scale_time", [(0.0, 0.0), (0.01, 0.0), (0.05, 0.2)])
def test_outputs_shapes_and_ranges(scale_dir, scale_time):
    torch.manual_seed(1)
    p = AMEDPredictor(PredictorConfig(scale_dir=scale_dir, scale_time=scale_time))
    feat, t, tn = _inputs()
    r, c, a = p(feat, t, tn)
    for v in (r, c, a):
        assert v.shape == (6, 1, 1, 1)
    assert ((r > 0) & (r < 1)).all()
    assert ((c >= 1 - scale_dir) & (c <= 1 + scale_dir)).all()
    assert ((a >= 1 - scale_time) & (a <= 1 + scale_time)).all()
    if scale_dir == 0:
        assert torch.equal(c, torch.ones_like(c))
    else:
        assert c.std() > 0  # the head exists and depends on its input
    if scale_time == 0:
        assert torch.equal(a, torch.ones_like(a))


def test_architecture_is_about_9k_parameters_with_zero_biases():
    p = AMEDPredictor(PredictorConfig(scale_dir=0.01))
    # 64*128+128 + 128*4+4 + 8*8+8 + 2 heads * (20+1)
    assert parameter_count(p) == 8192 + 128 + 512 + 4 + 72 + 42
    assert all(torch.count_nonzero(m.bias) == 0 for m in p.modules() if isinstance(m, torch.nn.Linear))


def test_zero_feature_equals_explicit_zeros():
    p = AMEDPredictor()
    _, t, tn = _inputs()
    a = p(None, t, tn)
    b = p(torch.zeros(6, 5, 8, 8), t, tn)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_feature_is_channel_mean_and_detached():
    p = AMEDPredictor()
    feat, t, tn = _inputs()
    feat.requires_grad_(True)
    # adding a per-pixel constant to every channel changes the channel mean; permuting channels does not
    r1, *_ = p(feat, t, tn)
    r2, *_ = p(feat[:, torch.randperm(32)], t, tn)
    torch.testing.assert_close(r1, r2)
    r1.sum().backward()
    assert feat.grad is None  # no gradient flows into the U-Net feature


def test_refuses_non_8x8_feature():
    p = AMEDPredictor()
    _, t, tn = _inputs()
    with pytest.raises(AmedError, match="8x8"):
        p(torch.zeros(6, 4, 16, 16), t, tn)


def test_default_tap_and_tap_checks():
    net = tiny_net()
    assert default_tap(net) == "enc.8x8_block0"
    with pytest.raises(AmedError, match="8x8"):
        check_tap(net, "enc.16x16_block0")
    with pytest.raises(AmedError, match="unknown feature tap"):
        check_tap(net, "enc.4x4_block9")
    flat = build_network(
        "EDMPrecond",
        dict(
            img_resolution=16,
            img_channels=1,
            model_type="SongUNet",
            model_channels=16,
            channel_mult=[1],
            num_blocks=1,
            attn_resolutions=[],
        ),
    )
    with pytest.raises(AmedError, match="no 8x8 encoder block"):
        AMEDNetwork(flat, AMEDPredictor())


def test_cifar_config_default_tap_is_last_8x8_block():
    with torch.device("meta"):
        net = build_network("EDMPrecond", dict(CIFAR10_KWARGS))
    assert default_tap(net) == "enc.8x8_block3"
    assert net.tap_shape("enc.8x8_block3") == (256, 8, 8)


def test_gradients_reach_the_predictor_only():
    from amed_deploy.solvers import SolverConfig, SolverState, step

    net = tiny_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    network = AMEDNetwork(net.requires_grad_(False), AMEDPredictor())
    sampler = SamplerConfig.create("amed", 5, "time_uniform", (0.002, 80.0), True)
    x = torch.randn(2, 1, 16, 16) * 5
    x_next = step(TorchModel(network), x, sampler.t_steps, 1, SolverConfig("amed", True), SolverState())
    x_next.square().mean().backward()
    assert network.predictor.head_r.weight.grad.abs().sum() > 0
    assert network.predictor.body[0].weight.grad.abs().sum() > 0  # through r, from the feature path
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_predictor_file_round_trip_and_checkpoint_binding(tmp_path):
    torch.manual_seed(3)
    p = AMEDPredictor(PredictorConfig(scale_dir=0.02, scale_time=0.1))
    sampler = SamplerConfig.create("amed", 5, "time_uniform", (0.002, 80.0), True)
    path = tmp_path / "p.pt"
    save_predictor(path, PredictorBundle(p, sampler, "enc.8x8_block0", "ab" * 32, {"note": 1}))
    loaded = load_predictor(path, checkpoint_sha256="ab" * 32)
    feat, t, tn = _inputs()
    for x, y in zip(p(feat, t, tn), loaded.predictor(feat, t, tn)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert loaded.sampler == sampler and loaded.tap == "enc.8x8_block0"
    with pytest.raises(AmedError, match="distilled for checkpoint"):
        load_predictor(path, checkpoint_sha256="cd" * 32)
    assert load_predictor(path, checkpoint_sha256="cd" * 32, allow_mismatch=True).tap == "enc.8x8_block0"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(AmedError, match="not a readable predictor"):
        load_predictor(path)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(AmedError, match="not an amed-deploy predictor"):
        load_predictor(tmp_path / "other.pt")


def test_sampler_config_validation():
    with pytest.raises(AmedError, match="odd"):
        SamplerConfig.create("amed", 4, "time_uniform", (0.002, 80.0), True)
    cfg = SamplerConfig.create("amed", 5, "time_uniform", (0.002, 80.0), True)
    assert cfg.num_points == 4 and cfg.t_steps[0] == 80.0
    bad = {**cfg.to_dict(), "nfe": 7}
    with pytest.raises(AmedError, match="inconsistent"):
        SamplerConfig.from_dict(bad)
    assert SamplerConfig.from_dict(cfg.to_dict()) == cfg
    for bad_steps in ([80.0, float("nan"), 1.0, 0.002], [80.0, 6.9, 1.3, float("-inf")], [80.0, 1.3, 6.9, 0.002]):
        with pytest.raises(AmedError, match="inconsistent"):
            SamplerConfig.from_dict({**cfg.to_dict(), "t_steps": bad_steps})
