"""Closed-form denoisers for testing solvers against exact truth."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from amed_deploy.solvers import Evaluation


class GaussianModel:
    """Data N(mu, s^2 I): D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2), exactly.

    Optionally reports fixed AMED predictor outputs (r, c, a) so AMED steps can be driven, and an EPD
    table (`epd`, an EPDParams); without one, EPD steps get K = 2 equal points at r (default 1/2) with
    equal weights and c = a = 1, which makes an EPD-Solver step a DPM-Solver-2 step at r."""

    def __init__(self, mu: Tensor, s: float, r: Tensor | float | None = None, c=None, a=None, epd=None):
        self.mu, self.s = mu, s
        self.r, self.c, self.a = r, c, a
        self.epd = epd
        self.calls = 0
        self.batches: list[int] = []  # the batch of every call

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        sig2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
        return (self.s**2 * x + sig2 * self.mu) / (self.s**2 + sig2)

    def _heads(self, x: Tensor) -> dict:
        def full(v):
            if v is None:
                return None
            if isinstance(v, Tensor):
                return v.to(x.dtype).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
            return torch.full((x.shape[0], 1, 1, 1), float(v), dtype=x.dtype)

        return {"r": full(self.r), "c": full(self.c), "a": full(self.a)}

    def __call__(self, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> Evaluation:
        self.calls += 1
        self.batches.append(x.shape[0])
        return Evaluation(self.denoise(x, sigma), **self._heads(x))

    def denoise_points(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.calls += 1
        self.batches.append(x.shape[0])
        mu = self.mu  # a per-sample mean is repeated K times, sample-major, as a model repeats labels
        if mu.dim() == x.dim() and mu.shape[0] > 1:
            mu = mu.repeat_interleave(x.shape[0] // mu.shape[0], dim=0)
        sig2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
        return (self.s**2 * x + sig2 * mu) / (self.s**2 + sig2)

    def epd_row(self, n: int):
        from amed_deploy.epd_table import EPDRow

        if self.epd is not None:
            return self.epd.row(n)
        r = 0.5 if self.r is None or isinstance(self.r, Tensor) else float(self.r)
        one = torch.ones(2, dtype=torch.float64)
        return EPDRow(r * one, 0.5 * one, one, one)

    def predict_without_feature(self, sigma: Tensor, sigma_next: Tensor) -> Evaluation:
        x = torch.zeros(sigma.shape[0], 1, 1, 1, dtype=sigma.dtype)
        return Evaluation(x[:0], **self._heads(x))

    def exact(self, x_start: Tensor, sigma_start: float, sigma: float) -> Tensor:
        """The ODE solution at sigma from x_start at sigma_start."""
        scale = math.sqrt(self.s**2 + sigma**2) / math.sqrt(self.s**2 + sigma_start**2)
        return self.mu + (x_start - self.mu) * scale


class MixtureModel:
    """Data = mixture of isotropic Gaussians N(mu_k, s_k^2 I) with weights pi_k: exact denoiser."""

    def __init__(self, mus: Tensor, stds: Tensor, weights: Tensor):
        self.mus, self.stds, self.weights = mus, stds, weights  # [K, D], [K], [K]

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)  # [B, D]
        dim = flat.shape[1]
        var = self.stds[None, :] ** 2 + sigma[:, None] ** 2  # [B, K]
        dist2 = ((flat[:, None, :] - self.mus[None]) ** 2).sum(-1)  # [B, K]
        logw = torch.log(self.weights)[None] - 0.5 * dist2 / var - 0.5 * dim * torch.log(var)
        w = torch.softmax(logw, dim=1)  # posterior over components
        s2 = self.stds[None, :, None] ** 2
        comp = (s2 * flat[:, None, :] + sigma[:, None, None] ** 2 * self.mus[None]) / (s2 + sigma[:, None, None] ** 2)
        return (w[:, :, None] * comp).sum(1).reshape(x.shape)

    def __call__(self, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> Evaluation:
        return Evaluation(self.denoise(x, sigma))
