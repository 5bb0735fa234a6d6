"""The numerical building blocks the solvers' step functions are made of, each written once.

The probability-flow ODE in EDM form is dx/dt = d(x, t) = (x - D(x, t)) / t with time t = sigma. Times
are Python floats (they are fixed per sampler) or, for the AMED predictor's learned intermediate times,
per-sample tensors of shape [B,1,1,1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

# Adams-Bashforth coefficients for equal steps (iPNDM), newest slope first, orders 1..4.
ADAMS_BASHFORTH = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


def slope(x: Tensor, denoised: Tensor, t: float | Tensor) -> Tensor:
    """d(x, t) = (x - D(x, t)) / t."""
    return (x - denoised) / t


def afs_slope(x: Tensor, t: float) -> Tensor:
    """Analytical first step: at t_0 the network output is essentially x/t, so d ~ x / sqrt(1 + t^2)."""
    return x / math.sqrt(1.0 + t * t)


def geometric_time(t: float, t_next: float, r: float | Tensor) -> float | Tensor:
    """s = t_next^r * t^(1-r): the intermediate time a fraction r of the way in log time."""
    if isinstance(r, Tensor):  # scalar math only: no host-to-device copy (CUDA-graph capturable)
        return t * torch.exp(r * math.log(t_next / t))
    return t * (t_next / t) ** r


def adams_bashforth(d: Tensor, history: Sequence[Tensor], max_order: int) -> Tensor:
    """iPNDM's combined slope: d with the stored slopes, order ramping up as history grows."""
    order = min(max_order, len(history) + 1)
    coeffs = ADAMS_BASHFORTH[order - 1]
    out = coeffs[0] * d
    for k in range(1, order):
        out = out + coeffs[k] * history[-k]
    return out


def uneven_adams_bashforth(
    d: Tensor,
    t: float | Tensor,
    h: float | Tensor,
    history: Sequence[Tensor],
    times: Sequence[float | Tensor],
    max_order: int,
) -> Tensor:
    """The Adams-Bashforth slope for a step from t to t + h on an uneven grid: the mean over the step of
    the polynomial through d (at t) and the stored slopes (at `times`), order ramping up as the history
    grows. Exact when the slope is a polynomial of degree < order in t; on equal steps it gives iPNDM's
    coefficients. Times may be per-sample tensors (the AMED-Plugin's learned intermediate times)."""
    order = min(max_order, len(history) + 1)
    nodes = [0.0] + [times[-k] - t for k in range(1, order)]  # positions relative to t
    ys = [d] + [history[-k] for k in range(1, order)]
    out = 0.0
    for j in range(order):
        coeffs: list = [1.0]  # prod over m != j of (u - u_m), lowest power first
        denom: float | Tensor = 1.0
        for m in range(order):
            if m != j:
                coeffs = (
                    [-nodes[m] * coeffs[0]]
                    + [coeffs[p - 1] - nodes[m] * coeffs[p] for p in range(1, len(coeffs))]
                    + [coeffs[-1]]
                )
                denom = denom * (nodes[j] - nodes[m])
        mean = sum(c * h**p / (p + 1) for p, c in enumerate(coeffs))  # (1/h) * integral over [0, h]
        out = out + (mean / denom) * ys[j]
    return out


def dpmpp_update(
    x: Tensor,
    t: float | Tensor,
    t_next: float | Tensor,
    m0: Tensor,
    history: Sequence[tuple[float | Tensor, Tensor]],
    order: int,
    *,
    predict_x0: bool = True,
    scale: float | Tensor = 1.0,
    third_weight: float = 1.0,
) -> Tensor:
    """The multistep DPM-Solver++ update from t to t_next (lambda = -log t), orders 1..3, as diff-sampler's
    `dpm_pp_sampler` and k-diffusion's `sample_dpmpp_2m` compute it.

    m0 is the model output at t (D, possibly thresholded, for data prediction; the slope d = eps for
    noise prediction), `history` the earlier (time, output) pairs, newest last; `scale` (the
    AMED-Plugin's c) multiplies the whole phi-term. `third_weight` 2 (`dpmpp3m_exact`) doubles the
    order-3 second-difference term, which makes one step exact when the output is quadratic in lambda;
    the published weight is 1. A step to t_next = 0 is order 1, taken as its limit (x = scale * D)."""
    if isinstance(t_next, (int, float)) and t_next == 0:
        if order != 1:
            raise ValueError("a step to t = 0 has order 1")
        return scale * m0 if predict_x0 else x - scale * t * m0
    h = _log(t / t_next)
    if predict_x0:
        phi1 = _expm1(-h)
        phi2 = phi1 / h + 1
        out, sign = (t_next / t) * x, -1.0
    else:
        phi1 = _expm1(h)
        phi2 = phi1 / h - 1
        out, sign = x, -t_next  # noise prediction: x_t = x - t (phi_1 m0 + ...)
    term = phi1 * m0
    if order >= 2:
        t_p, m_p = history[-1]
        r0 = _log(t_p / t) / h
        d1_0 = (m0 - m_p) / r0
        if order == 2:
            term = term + 0.5 * phi1 * d1_0
        else:
            t_pp, m_pp = history[-2]
            r1 = _log(t_pp / t_p) / h
            d1_1 = (m_p - m_pp) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi3 = phi2 / h - 0.5
            second = phi2 * d1 if not predict_x0 else -phi2 * d1
            term = term + second + third_weight * phi3 * d2
    return out + sign * scale * term


def dynamic_threshold(denoised: Tensor, quantile: float = 0.995, max_value: float = 1.0) -> Tensor:
    """diff-sampler's (and DPM-Solver's) dynamic thresholding of D: per sample, s = max(the `quantile`
    of |D| over the sample's elements, max_value); D <- clamp(D, -s, s) / s.

    The quantile is torch.quantile's linear interpolation, computed from a sort at fixed positions, so
    it needs no host synchronisation (a CUDA graph can record it)."""
    flat = denoised.abs().reshape(denoised.shape[0], -1)
    n = flat.shape[1]
    pos = quantile * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    ordered = flat.sort(dim=1).values
    q = ordered[:, lo] + (pos - lo) * (ordered[:, hi] - ordered[:, lo])
    s = q.clamp(min=max_value).reshape(-1, *[1] * (denoised.dim() - 1))
    return torch.maximum(torch.minimum(denoised, s), -s) / s


def _log(v: float | Tensor) -> float | Tensor:
    return torch.log(v) if isinstance(v, Tensor) else math.log(v)


def _expm1(v: float | Tensor) -> float | Tensor:
    return torch.expm1(v) if isinstance(v, Tensor) else math.expm1(v)
