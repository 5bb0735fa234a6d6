"""Tests of the independent EDM network re-implementation (amed_deploy.networks).

Key lists in tests/data come from the official code; everything else checks documented behaviour
on tiny randomised networks so the file runs fast on CPU.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from presets import TINY_ADM_KWARGS, TINY_NCSNPP_KWARGS, TINY_SONGUNET_KWARGS
from torch import nn

from amed_deploy.errors import AmedError
from amed_deploy.networks import (
    CIFAR10_KWARGS,
    NETWORK_CLASSES,
    EDMPrecond,
    VEPrecond,
    VPPrecond,
    build_network,
    count_parameters,
    feature_shapes,
    iDDPMPrecond,
    randomize_,
)
from amed_deploy.networks.layers import Conv2d, GroupNorm, PositionalEmbedding, attention

DATA = Path(__file__).parent / "data"

CIFAR_VP = CIFAR10_KWARGS
CIFAR_VE = dict(
    CIFAR_VP, embedding_type="fourier", encoder_type="residual", channel_mult_noise=2, resample_filter=[1, 3, 3, 1]
)
IMAGENET_ADM = dict(
    img_resolution=64,
    img_channels=3,
    label_dim=1000,
    use_fp16=True,
    model_type="DhariwalUNet",
    model_channels=192,
    channel_mult=[1, 2, 3, 4],
    num_blocks=3,
    attn_resolutions=[32, 16, 8],
    dropout=0.10,
)
TINY_CONFIGS = {"ddpmpp": TINY_SONGUNET_KWARGS, "ncsnpp": TINY_NCSNPP_KWARGS, "adm": TINY_ADM_KWARGS}
PRECONDS = [EDMPrecond, VPPrecond, VEPrecond, iDDPMPrecond]


def _reference_keys(name: str) -> list[tuple[str, str, str]]:
    lines = (DATA / name).read_text().splitlines()
    return [tuple(line.split("\t")) for line in lines if line.strip()]


def _our_keys(net: nn.Module) -> list[tuple[str, str, str]]:
    return [(k, str(list(v.shape)), str(v.dtype)) for k, v in net.state_dict().items()]


def _tiny(cls: type = EDMPrecond, config: str = "ddpmpp", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_(cls(**TINY_CONFIGS[config]), seed).eval()


def _inputs(batch: int = 2, res: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, res, res, generator=gen) * 2
    sigma = torch.tensor([0.3, 5.0, 40.0, 1.0][:batch])
    labels = F.one_hot(torch.arange(batch) % 10, 10).float()
    return x, sigma, labels


# ---------------------------------------------------------------- state-dict layout and counts


def test_cifar10_key_list_matches_official() -> None:
    with torch.device("meta"):
        net = EDMPrecond(**CIFAR_VP)
    ref = _reference_keys("edm-cifar10-32x32-cond-vp.keys.tsv")
    assert len(ref) == 427
    assert _our_keys(net) == ref
    assert count_parameters(net) == 55_735_299


def test_tiny_key_list_matches_official() -> None:
    net = EDMPrecond(**TINY_SONGUNET_KWARGS)
    ref = _reference_keys("tiny-ddpmpp.keys.tsv")
    assert len(ref) == 149
    assert _our_keys(net) == ref


def test_parameter_counts_of_released_configs() -> None:
    with torch.device("meta"):
        assert count_parameters(EDMPrecond(**dict(CIFAR_VP, label_dim=0))) == 55_733_891
        assert count_parameters(EDMPrecond(**IMAGENET_ADM)) == 295_899_267
        ffhq = dict(CIFAR_VP, img_resolution=64, label_dim=0, channel_mult=[1, 2, 2, 2], dropout=0.05)
        assert count_parameters(EDMPrecond(**ffhq)) == 61_805_571
        ve = VEPrecond(**CIFAR_VE)
    assert abs(count_parameters(ve) - 56.4e6) < 0.1e6
    keys = list(ve.state_dict())
    assert keys[0] == "model.map_noise.freqs"
    assert "model.enc.16x16_aux_residual.resample_filter" in keys
    assert tuple(ve.state_dict()["model.enc.16x16_aux_residual.resample_filter"].shape) == (1, 1, 4, 4)


def test_iddpm_has_u_buffer_and_double_output() -> None:
    net = iDDPMPrecond(**TINY_ADM_KWARGS)
    sd = net.state_dict()
    assert list(sd)[0] == "u" and sd["u"].shape == (1001,)
    assert sd["model.out_conv.weight"].shape[0] == 6
    assert net.sigma_max == pytest.approx(float(sd["u"][0])) and net.sigma_min == pytest.approx(float(sd["u"][999]))
    assert torch.all(sd["u"][:-1] > sd["u"][1:])


def test_adm_resampling_skips_have_only_filter() -> None:
    net = EDMPrecond(**TINY_ADM_KWARGS)
    sd = net.state_dict()
    assert [k for k in sd if k.startswith("model.enc.8x8_down.skip")] == ["model.enc.8x8_down.skip.resample_filter"]
    assert "model.enc.16x16_block0.conv0.resample_filter" not in sd


# ---------------------------------------------------------------- layers


def test_resample_filter_11_is_avgpool_and_nearest() -> None:
    x = torch.randn(2, 5, 8, 8)
    down, up = Conv2d(5, 5, kernel=0, down=True), Conv2d(5, 5, kernel=0, up=True)
    assert down.resample_filter.shape == (1, 1, 2, 2)
    assert torch.equal(down(x), F.avg_pool2d(x, 2))
    assert torch.equal(up(x), F.interpolate(x, scale_factor=2, mode="nearest"))
    assert "resample_filter" not in Conv2d(5, 5, kernel=3).state_dict()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel=0, up=True),
        dict(kernel=0, down=True),
        dict(kernel=3, up=True),
        dict(kernel=1, down=True),
        dict(kernel=3, up=True, fused_resample=True),
        dict(kernel=3, down=True, fused_resample=True),
        dict(kernel=0, down=True, resample_filter=[1, 3, 3, 1]),
    ],
)
def test_fast_resampling_matches_the_filter_convolution(monkeypatch, kwargs) -> None:
    """Half-precision CUDA tensors resample a box filter by pooling / nearest-neighbour copies instead
    of depthwise convolutions; forced here on the CPU in fp64, it must give the convolutions' result."""
    from amed_deploy.networks import layers

    torch.manual_seed(0)
    conv = Conv2d(4, 6 if kwargs["kernel"] else 4, **kwargs).double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    want = conv(x)
    fast = []

    def spy(fn):
        def wrapped(*args, **kw):
            fast.append(fn.__name__)
            return fn(*args, **kw)

        return wrapped

    for name in ("avg_pool2d", "interpolate"):
        monkeypatch.setattr(F, name, spy(getattr(F, name)))
    monkeypatch.setattr(layers, "_fused_kernels", lambda t: True)
    got = conv(x)
    if conv.box_filter:
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert len(fast) == 1
    else:  # [1, 3, 3, 1] keeps its convolution
        assert torch.equal(got, want) and not fast


def test_resample_filter_1331_shapes_and_dc_gain() -> None:
    f = torch.tensor([1.0, 3, 3, 1])
    down = Conv2d(4, 4, kernel=0, down=True, resample_filter=[1, 3, 3, 1])
    assert torch.allclose(down.resample_filter[0, 0], torch.outer(f, f) / 64)
    const = torch.full((1, 4, 8, 8), 2.0)
    y = down(const)
    assert y.shape == (1, 4, 4, 4)
    assert torch.allclose(y[..., 1:-1, 1:-1], torch.full_like(y[..., 1:-1, 1:-1], 2.0))
    up = Conv2d(4, 4, kernel=0, up=True, resample_filter=[1, 3, 3, 1])
    assert up(const).shape == (1, 4, 16, 16)
    assert torch.allclose(up(const)[..., 2:-2, 2:-2], torch.full((1, 4, 12, 12), 2.0))
    fused = Conv2d(4, 6, kernel=3, down=True, resample_filter=[1, 3, 3, 1], fused_resample=True)
    assert fused(const).shape == (1, 6, 4, 4)


def test_attention_interleaves_qkv() -> None:
    b, heads, c, h, w = 2, 2, 8, 3, 4
    qkv = torch.randn(b, 3 * c, h, w)
    # Hand-written reference: channel i*3+j holds q (j=0), k (1), v (2) of channel i; heads are
    # contiguous groups of c/heads channels.
    q, k, v = (qkv[:, j::3].reshape(b, heads, c // heads, h * w) for j in range(3))
    logits = torch.einsum("bhcq,bhck->bhqk", q, k) / math.sqrt(c // heads)
    ref = torch.einsum("bhqk,bhck->bhcq", logits.softmax(dim=-1), v).reshape(b, c, h, w)
    out = attention(qkv, heads)
    assert torch.allclose(out, ref, atol=1e-6)
    # The contiguous-block reading differs, so the check above is meaningful.
    qc, kc, vc = (t.reshape(b, heads, c // heads, h * w) for t in qkv.chunk(3, dim=1))
    wrong = torch.einsum("bhcq,bhck->bhqk", qc, kc) / math.sqrt(c // heads)
    wrong = torch.einsum("bhqk,bhck->bhcq", wrong.softmax(dim=-1), vc).reshape(b, c, h, w)
    assert not torch.allclose(out, wrong, atol=1e-3)


def test_fused_attention_matches_the_explicit_one() -> None:
    """The CUDA fp16 path's kernel (scaled_dot_product_attention) computes the same attention; checked
    here in fp32 on the CPU, and end to end in fp16 on the GPU by tests/test_gpu.py."""
    from amed_deploy.networks.layers import explicit_attention, fused_attention

    q, k, v = (torch.randn(6, 16, 64) * 3 for _ in range(3))
    torch.testing.assert_close(fused_attention(q, k, v), explicit_attention(q, k, v), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fused_attention(q, k, v), explicit_attention(q, v, k), atol=1e-2)  # k, v matter


def test_half_precision_norm_and_attention_stay_finite() -> None:
    x = torch.randn(2, 16, 4, 4) * 300
    norm = GroupNorm(16)
    assert norm.num_groups == 4
    y = norm(x.half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    assert torch.allclose(y.float(), norm(x), atol=1e-2)
    a = attention((torch.randn(1, 48, 4, 4) * 30).half(), 1)
    assert a.dtype == torch.float16 and torch.isfinite(a).all()


def test_groupnorm_groups_and_eps() -> None:
    assert GroupNorm(512).num_groups == 32 and GroupNorm(64).num_groups == 16
    song, adm = EDMPrecond(**TINY_SONGUNET_KWARGS), EDMPrecond(**TINY_ADM_KWARGS)
    assert song.model.enc["16x16_block0"].norm0.eps == 1e-6 and song.model.dec["16x16_aux_norm"].eps == 1e-6
    assert adm.model.enc["16x16_block0"].norm0.eps == 1e-5 and adm.model.out_norm.eps == 1e-5


def test_positional_embedding_cos_then_sin() -> None:
    x = torch.tensor([0.5, -2.0])
    emb = PositionalEmbedding(8, endpoint=True)(x)
    freqs = (1 / 10000) ** (torch.arange(4) / 3)
    arg = x[:, None] * freqs[None]
    assert torch.allclose(emb, torch.cat([arg.cos(), arg.sin()], dim=1))


def test_songunet_embedding_swap_and_label_scaling() -> None:
    net = _tiny()
    seen: dict[str, torch.Tensor] = {}
    net.model.map_layer0.register_forward_pre_hook(lambda m, a: seen.__setitem__("layer0", a[0]))
    net.model.map_label.register_forward_pre_hook(lambda m, a: seen.__setitem__("label", a[0]))
    x, sigma, labels = _inputs()
    with torch.no_grad():
        net(x, sigma, labels)
    assert torch.allclose(seen["label"], labels * math.sqrt(10))
    c_noise = sigma.log() / 4
    arg = c_noise[:, None] * (1 / 10000) ** (torch.arange(16) / 15)[None]
    expected = torch.cat([arg.sin(), arg.cos()], dim=1) + net.model.map_label(labels * math.sqrt(10))
    assert torch.allclose(seen["layer0"], expected, atol=1e-6)


def test_labels_none_means_zeros_and_augment_only_when_given() -> None:
    net = _tiny()
    x, sigma, labels = _inputs()
    with torch.no_grad():
        assert torch.equal(net(x, sigma), net(x, sigma, torch.zeros_like(labels)))
        aug = torch.randn(2, 9)
        assert not torch.allclose(net(x, sigma, labels, augment_labels=aug), net(x, sigma, labels))


# ---------------------------------------------------------------- whole networks


@pytest.mark.parametrize("config", sorted(TINY_CONFIGS))
@pytest.mark.parametrize("cls", PRECONDS, ids=lambda c: c.__name__)
def test_output_shape_and_finite(cls: type, config: str) -> None:
    net = _tiny(cls, config)
    x, sigma, labels = _inputs()
    with torch.no_grad():
        d = net(x, sigma, labels)
        assert d.shape == x.shape and d.dtype == torch.float32 and torch.isfinite(d).all()
        # sigma as scalar, [B] and [B,1,1,1] are all accepted.
        same = torch.full((2,), 2.0)
        ref = net(x, same, labels)
        assert torch.equal(net(x, 2.0, labels), ref)
        assert torch.equal(net(x, same.reshape(2, 1, 1, 1), labels), ref)


def test_state_dict_roundtrip_gives_identical_outputs() -> None:
    net = _tiny(EDMPrecond, "ncsnpp", seed=1)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    other = EDMPrecond(**TINY_NCSNPP_KWARGS).eval()
    other.load_state_dict(torch.load(buf, weights_only=True))
    x, sigma, labels = _inputs()
    with torch.no_grad():
        assert torch.equal(net(x, sigma, labels), other(x, sigma, labels))


def test_randomize_is_seeded_and_makes_output_depend_on_network() -> None:
    a, b = _tiny(seed=3), _tiny(seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    x, sigma, labels = _inputs()
    with torch.no_grad():
        d = a(x, sigma, labels)
        c_skip = 0.25 / (sigma**2 + 0.25)
        assert (d - c_skip.reshape(-1, 1, 1, 1) * x).abs().max() > 1e-2


# ---------------------------------------------------------------- feature taps


@pytest.mark.parametrize("config", sorted(TINY_CONFIGS))
def test_taps_return_block_outputs_without_changing_d(config: str) -> None:
    net = _tiny(EDMPrecond, config)
    shapes = feature_shapes(net)
    taps = ("dec.16x16_block1", "enc.8x8_block0")
    assert shapes["enc.8x8_block0"] == net.tap_shape("enc.8x8_block0") == (64, 8, 8)
    hooked: dict[str, torch.Tensor] = {}
    for name in taps:
        part, block = name.split(".")
        getattr(net.model, part)[block].register_forward_hook(lambda m, a, out, n=name: hooked.__setitem__(n, out))
    x, sigma, labels = _inputs()
    with torch.no_grad():
        d, feats = net(x, sigma, labels, taps=taps)
        assert torch.equal(d, net(x, sigma, labels))
    assert len(feats) == 2
    for name, feat in zip(taps, feats, strict=True):
        assert tuple(feat.shape) == (2, *shapes[name])
        assert torch.equal(feat, hooked[name])


def test_unknown_tap_lists_valid_names() -> None:
    net = _tiny()
    x, sigma, labels = _inputs()
    with pytest.raises(ValueError, match="enc.8x8_block0"):
        net(x, sigma, labels, taps=("enc.4x4_block9",))
    with pytest.raises(ValueError):
        net.tap_shape("nope")


def test_cifar_8x8_tap_shape() -> None:
    with torch.device("meta"):
        net = EDMPrecond(**CIFAR_VP)
    assert net.tap_shape("enc.8x8_block3") == (256, 8, 8)
    assert "enc.8x8_block3" in feature_shapes(net) and not any("aux" in k for k in feature_shapes(net))


# ---------------------------------------------------------------- preconditioning formulas


class _StubUNet(nn.Module):
    """Returns a fixed F and records what the preconditioner fed in."""

    def __init__(self, f: torch.Tensor) -> None:
        super().__init__()
        self.f = f
        self.seen: dict[str, torch.Tensor | None] = {}

    def forward(self, x, noise_labels, class_labels, augment_labels=None, taps=()):
        self.seen.update(x=x, noise=noise_labels, labels=class_labels)
        return self.f.to(x.dtype)


def _run_stub(net: nn.Module, out_channels: int = 3) -> tuple[torch.Tensor, torch.Tensor, _StubUNet, torch.Tensor]:
    x, _, _ = _inputs(batch=3)
    sigma = torch.tensor([0.01, 0.7, 80.0])
    f = torch.randn(3, out_channels, 16, 16)
    net.model = _StubUNet(f)
    d = net(x, sigma)
    return x, sigma.reshape(-1, 1, 1, 1), net.model, d


def test_edm_precond_formula() -> None:
    x, s, stub, d = _run_stub(EDMPrecond(**TINY_SONGUNET_KWARGS, sigma_data=0.5))
    sd = 0.5
    c_skip, c_out, c_in = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt(), 1 / (s**2 + sd**2).sqrt()
    assert torch.allclose(d, c_skip * x + c_out * stub.f, atol=1e-5)
    assert torch.allclose(stub.seen["x"], c_in * x)
    assert torch.allclose(stub.seen["noise"], s.flatten().log() / 4)
    assert torch.equal(stub.seen["labels"], torch.zeros(3, 10))


def test_vp_precond_formula() -> None:
    net = VPPrecond(**TINY_SONGUNET_KWARGS)
    x, s, stub, d = _run_stub(net)
    assert torch.allclose(d, x - s * stub.f, atol=1e-5)
    assert torch.allclose(stub.seen["x"], x / (s**2 + 1).sqrt())
    t = ((0.1**2 + 2 * 19.9 * (1 + s.flatten() ** 2).log()).sqrt() - 0.1) / 19.9
    assert torch.allclose(stub.seen["noise"], 999 * t, rtol=1e-5)
    assert torch.allclose(net.sigma(t), s.flatten(), rtol=1e-4)
    assert net.sigma_min == pytest.approx(1e-3, rel=0.05) and net.sigma_max == pytest.approx(152.2, rel=1e-3)


def test_ve_precond_formula() -> None:
    x, s, stub, d = _run_stub(VEPrecond(**TINY_SONGUNET_KWARGS))
    assert torch.allclose(d, x + s * stub.f, atol=1e-5)
    assert torch.equal(stub.seen["x"], x)
    assert torch.allclose(stub.seen["noise"], (s.flatten() / 2).log())


def test_iddpm_precond_formula() -> None:
    net = iDDPMPrecond(**TINY_ADM_KWARGS)
    u = net.u.clone()
    x, s, stub, d = _run_stub(net, out_channels=6)
    assert torch.allclose(d, x - s * stub.f[:, :3], atol=1e-5)
    assert torch.allclose(stub.seen["x"], x / (s**2 + 1).sqrt())
    index = (s.flatten()[:, None] - u[None]).abs().argmin(dim=1)
    assert torch.equal(stub.seen["noise"], (999 - index).float())
    assert torch.equal(net.round_sigma(s), u[index].reshape(s.shape))


# ---------------------------------------------------------------- construction helpers


def test_build_network_from_kwargs() -> None:
    assert set(NETWORK_CLASSES) == {"EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond"}
    net = build_network("training.networks.EDMPrecond", dict(TINY_SONGUNET_KWARGS))
    assert isinstance(net, EDMPrecond) and net.img_resolution == 16 and net.label_dim == 10
    with pytest.raises(AmedError, match="unsupported network class"):
        build_network("Unet2DModel", {})
    with pytest.raises(AmedError, match="cannot build"):
        build_network("EDMPrecond", dict(TINY_SONGUNET_KWARGS, bogus=1))
    with pytest.raises(AmedError, match="model_type"):
        build_network("EDMPrecond", dict(TINY_SONGUNET_KWARGS, model_type="Nope"))
    with pytest.raises(AmedError, match="encoder_type"):
        build_network("EDMPrecond", dict(TINY_SONGUNET_KWARGS, encoder_type="fancy"))


# ---------------------------------------------------------------- ONNX


def test_onnx_export_with_tap_matches_onnxruntime(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    net = _tiny(EDMPrecond, "ddpmpp", seed=2)
    tap = "enc.8x8_block0"

    class WithTap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x, sigma, labels):
            d, (feat,) = self.net(x, sigma, labels, taps=(tap,))
            return d, feat

    wrapper = WithTap().eval()
    x, sigma, labels = _inputs()
    with torch.no_grad():
        d_ref, feat_ref = wrapper(x, sigma, labels)
    path = tmp_path / "tiny.onnx"
    program = torch.onnx.export(
        wrapper,
        (x, sigma, labels),
        dynamo=True,
        opset_version=18,
        input_names=["x", "sigma", "labels"],
        output_names=["denoised", "feature"],
        verbose=False,
    )
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    d_ort, feat_ort = session.run(None, {"x": x.numpy(), "sigma": sigma.numpy(), "labels": labels.numpy()})
    assert feat_ort.shape == (2, *net.tap_shape(tap))
    assert np.abs(d_ort - d_ref.numpy()).max() < 1e-4
    assert np.abs(feat_ort - feat_ref.numpy()).max() < 1e-4
