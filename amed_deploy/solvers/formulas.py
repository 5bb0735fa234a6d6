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
    x: Tensor, t: float, t_next: float, denoised: Tensor, history: Sequence[tuple[float, Tensor]], order: int
) -> Tensor:
    """DPM-Solver++ multistep update (data prediction, lambda = -log t), orders 1..3.

    Order 2 is the published 2M form. In order 3 the second-difference term carries the weight that
    makes one step exact when D is quadratic in lambda (tested against the closed-form integral);
    some public implementations use half of it, which costs an order."""
    h = math.log(t / t_next)
    phi1 = math.expm1(-h)
    out = (t_next / t) * x - phi1 * denoised
    if order == 1:
        return out
    t_p, d_p = history[-1]
    r0 = math.log(t_p / t) / h
    d1_0 = (denoised - d_p) / r0
    if order == 2:
        return out - 0.5 * phi1 * d1_0
    t_pp, d_pp = history[-2]
    r1 = math.log(t_pp / t_p) / h
    d1_1 = (d_p - d_pp) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    return out + (phi1 / h + 1) * d1 - 2 * ((phi1 + h) / h**2 - 0.5) * d2
