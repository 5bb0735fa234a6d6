"""A high-accuracy solution of the sampling ODE, the yardstick for every solver's error.

The ODE is integrated in u = log(sigma), where it reads dx/du = x - D(x, sigma): smooth and
well-scaled over the whole 80 -> 0.002 range, so an adaptive Runge-Kutta method needs few steps.
For large networks the cheaper yardstick is a many-step Heun run through `sample` (EDM's own
reference is Heun with 18 steps); this adaptive one is exact to its tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from ..errors import AmedError

Denoiser = Callable[[Tensor, Tensor], Tensor]  # (x [B,...], sigma [B]) -> D(x, sigma)


def reference_solution(
    denoise: Denoiser,
    x: Tensor,
    sigma_start: float,
    sigma_end: float,
    rtol: float = 1e-8,
    atol: float = 1e-8,
    method: str = "DOP853",
) -> Tensor:
    """Solve from sigma_start to sigma_end with scipy's adaptive integrator; returns x at sigma_end.

    The denoiser is evaluated in x's dtype and device; the integrator state is float64 on the CPU."""
    shape, dtype, device = x.shape, x.dtype, x.device
    batch = shape[0]

    def rhs(u: float, y: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
        sigma = torch.full((batch,), math.exp(u), dtype=dtype, device=device)
        with torch.no_grad():
            dxdu = xt - denoise(xt, sigma)
        return dxdu.to(torch.float64).cpu().numpy().ravel()

    y0 = x.detach().to(torch.float64).cpu().numpy().ravel()
    sol = solve_ivp(rhs, (math.log(sigma_start), math.log(sigma_end)), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise AmedError(f"reference ODE solve failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).reshape(shape).to(device=device, dtype=dtype)
