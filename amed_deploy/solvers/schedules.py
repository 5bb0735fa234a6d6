"""Time schedules t_0 = sigma_max > ... > t_{N-1} = sigma_min (EDM convention: time is noise level).

Values are computed in float64 and returned as a Python list so they can be baked into a fixed
sampler (exported metadata, CUDA graphs) without device round trips.
"""

from __future__ import annotations

import math

from ..errors import AmedError

SCHEDULES = ("polynomial", "logsnr", "time_uniform")
VP_EPS = 1e-3  # the VP curve's smallest time u, the point mapped to sigma_min


def polynomial(num_points: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """EDM's (Karras) schedule: uniform steps in sigma^(1/rho)."""
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(a + i / (num_points - 1) * (b - a)) ** rho for i in range(num_points)]


def logsnr(num_points: int, sigma_min: float, sigma_max: float) -> list[float]:
    """Uniform steps in log(sigma), i.e. in log-SNR."""
    a, b = math.log(sigma_max), math.log(sigma_min)
    return [math.exp(a + i / (num_points - 1) * (b - a)) for i in range(num_points)]


def vp_sigma(u: float, beta_d: float, beta_min: float) -> float:
    """sigma(u) = sqrt(exp(beta_d u^2/2 + beta_min u) - 1) of the VP SDE, in float64 with expm1 (exact near 0)."""
    return math.sqrt(math.expm1(beta_d * u * u / 2 + beta_min * u))


def vp_coefficients(sigma_min: float, sigma_max: float, eps: float = VP_EPS) -> tuple[float, float]:
    """(beta_d, beta_min) of the VP curve sigma(u) = sqrt(exp(beta_d u^2/2 + beta_min u) - 1)
    passing through sigma(1) = sigma_max and sigma(eps) = sigma_min (a 2x2 linear solve)."""
    big, small = math.log1p(sigma_max**2), math.log1p(sigma_min**2)
    # big = beta_d/2 + beta_min ; small = beta_d eps^2/2 + beta_min eps
    beta_d = 2 * (small - eps * big) / (eps * eps - eps)
    beta_min = big - beta_d / 2
    return beta_d, beta_min


def time_uniform(
    num_points: int, sigma_min: float, sigma_max: float, rho: float = 1.0, eps: float = VP_EPS
) -> list[float]:
    """Uniform steps in the VP time u (to the power rho), mapped through the fitted VP curve.

    This is the AMED-Solver recipe's schedule (rho = 1)."""
    beta_d, beta_min = vp_coefficients(sigma_min, sigma_max, eps)
    a, b = 1.0, eps ** (1 / rho)
    us = [(a + i / (num_points - 1) * (b - a)) ** rho for i in range(num_points)]
    out = [vp_sigma(u, beta_d, beta_min) for u in us]
    out[0], out[-1] = sigma_max, sigma_min  # exact end points despite rounding
    return out


def make_schedule(
    name: str, num_points: int, sigma_min: float, sigma_max: float, rho: float | None = None
) -> list[float]:
    """Build a schedule by name; `rho` defaults to 7 (polynomial) or 1 (time_uniform)."""
    if num_points < 2:
        raise AmedError(f"a schedule needs at least 2 time points, got {num_points}")
    if not (0 < sigma_min < sigma_max and math.isfinite(sigma_max)):
        raise AmedError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
    if name == "polynomial":
        return polynomial(num_points, sigma_min, sigma_max, 7.0 if rho is None else rho)
    if name == "logsnr":
        return logsnr(num_points, sigma_min, sigma_max)
    if name == "time_uniform":
        return time_uniform(num_points, sigma_min, sigma_max, 1.0 if rho is None else rho)
    raise AmedError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def nested_schedule(
    name: str, num_points: int, refine: int, sigma_min: float, sigma_max: float, rho: float | None = None
) -> list[float]:
    """The teacher grid with `refine` extra points inside every interval of the student grid.

    Built as the same schedule with (refine+1)(N-1)+1 points, so every student time point is also a
    teacher time point (the grids nest exactly)."""
    return make_schedule(name, (refine + 1) * (num_points - 1) + 1, sigma_min, sigma_max, rho)


def split_intervals(grid: list[float], parts: int, rho: float = 7.0) -> list[float]:
    """Every interval [a, b] of `grid` cut into `parts` sub-intervals uniform in t^(1/rho) between its
    ends: the inner steps of EPD's teachers (`inner_steps` = parts + 1 points, rho = 7). The grid's own
    points stay, at every `parts`-th position."""
    if parts < 1:
        raise AmedError(f"an interval splits into at least 1 part, got {parts}")
    out = [grid[0]]
    for a, b in zip(grid, grid[1:]):
        lo, hi = a ** (1 / rho), b ** (1 / rho)
        out += [(lo + j / parts * (hi - lo)) ** rho for j in range(1, parts)] + [b]
    return out
