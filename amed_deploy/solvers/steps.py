"""One step function per solver, and the loop that drives them; shared by reference sampling,
distillation and every deployed executor.

A solver advances one interval [t_n -> t_{n+1}] at a time through `step`, which makes the interval's
first evaluation (or the analytical first step) and hands an `Interval` to the solver's own step
function, found through the registry (`registry.py`); `sample` runs all intervals. Like k-diffusion's
sampling.py, each step function is the solver's formula and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..errors import AmedError
from .formulas import adams_bashforth, afs_slope, dpmpp_update, geometric_time, slope, uneven_adams_bashforth
from .model import Evaluation, Model

if TYPE_CHECKING:
    from .registry import SolverConfig

HISTORY = 3  # multistep solvers keep this many past slopes or denoised outputs (order 4 needs 3)


@dataclass
class SolverState:
    """What multistep solvers carry between intervals, and the evaluation count."""

    slopes: list[Tensor] = field(default_factory=list)  # iPNDM and its plugin: newest last
    slope_times: list[float | Tensor] = field(default_factory=list)  # where each slope was taken
    denoised: list[tuple[float, Tensor]] = field(default_factory=list)  # DPM-Solver++: (t, D)
    nfe: int = 0

    def push_slope(self, d: Tensor, t: float | Tensor) -> None:
        """Remember a slope and the time it was taken at, dropping the oldest beyond HISTORY."""
        _push(self.slopes, d)
        _push(self.slope_times, t)

    def push_denoised(self, t: float, denoised: Tensor) -> None:
        """Remember D(x, t); copied, because executors reuse their output buffers."""
        _push(self.denoised, (t, denoised.clone()))

    def detach_history(self) -> None:
        """Turn the history into plain data: distillation trains one interval at a time, so no gradient
        may flow back into an earlier interval's step through a stored slope or time."""
        self.slopes = [s.detach() for s in self.slopes]
        self.slope_times = [v.detach() if isinstance(v, Tensor) else v for v in self.slope_times]
        self.denoised = [(t, v.detach()) for t, v in self.denoised]


def _push(history: list, item: object) -> None:
    history.append(item)
    del history[:-HISTORY]


@dataclass(frozen=True)
class Interval:
    """Interval n as a step function sees it: x at t, the slope d there and the D(x, t) behind it
    (analytical after AFS), and `first`, the interval's first evaluation (carrying the AMED predictor's
    r, c, a; None after AFS without a predictor)."""

    model: Model
    state: SolverState
    config: SolverConfig
    t_steps: Sequence[float]
    n: int
    x: Tensor
    denoised: Tensor
    d: Tensor
    first: Evaluation | None

    @property
    def t(self) -> float:
        return self.t_steps[self.n]

    @property
    def t_next(self) -> float:
        return self.t_steps[self.n + 1]

    @property
    def h(self) -> float:
        return self.t_next - self.t

    def slope_at(self, x: Tensor, s: float | Tensor, sigma: float | Tensor | None = None) -> Tensor:
        """The slope at (x, s) from one more network call. The network is fed `sigma` (default s; the
        AMED time scale a moves it), the slope is still divided by s."""
        ev = _call(self.model, self.state, x, s if sigma is None else sigma, self.t_next)
        return slope(x, ev.denoised, s)

    def predictor(self) -> tuple[Tensor, Tensor | float, Tensor | float]:
        """The AMED predictor's (r, c, a) for this interval; c and a default to 1."""
        ev = self.first
        if ev is None or ev.r is None:
            raise AmedError(f"solver {self.config.name} needs a model with an AMED predictor (r output)")
        return ev.r, (1.0 if ev.c is None else ev.c), (1.0 if ev.a is None else ev.a)


StepFunction = Callable[[Interval], Tensor]


def _sigmas(x: Tensor, value: float | Tensor) -> Tensor:
    """A per-sample [B] sigma tensor from a scalar or a [B,1,1,1] tensor."""
    if isinstance(value, Tensor):
        return value.reshape(x.shape[0])
    return torch.full((x.shape[0],), value, dtype=x.dtype, device=x.device)


def _call(model: Model, state: SolverState, x: Tensor, t: float | Tensor, t_next: float) -> Evaluation:
    state.nfe += 1
    return model(x, _sigmas(x, t), _sigmas(x, t_next))


def step(model: Model, x: Tensor, t_steps: Sequence[float], n: int, solver: SolverConfig, state: SolverState) -> Tensor:
    """Advance x over interval n, from t_steps[n] to t_steps[n+1], with the solver's step function.

    With AFS the first interval (n = 0) uses the analytical slope instead of a network call."""
    t, t_next = t_steps[n], t_steps[n + 1]
    spec = solver.spec
    if solver.afs and n == 0:
        d = afs_slope(x, t)
        denoised = x - t * d
        ev = model.predict_without_feature(_sigmas(x, t), _sigmas(x, t_next)) if spec.uses_predictor else None
    else:
        ev = _call(model, state, x, t, t_next)
        denoised = ev.denoised
        d = slope(x, denoised, t)
    return spec.step(Interval(model, state, solver, t_steps, n, x, denoised, d, ev))


def sample(
    model: Model,
    x: Tensor,
    t_steps: Sequence[float],
    solver: SolverConfig,
    on_interval: Callable[[int, Tensor], None] | None = None,
) -> tuple[Tensor, SolverState]:
    """Integrate from t_steps[0] to t_steps[-1], starting at x (already scaled by sigma_max).

    Returns the final x and the solver state (whose nfe is the number of network calls made)."""
    state = SolverState()
    for n in range(len(t_steps) - 1):
        x = step(model, x, t_steps, n, solver, state)
        if on_interval is not None:
            on_interval(n, x)
    return x, state


# ------------------------------------------------------------------------------------ step functions


def euler(iv: Interval) -> Tensor:
    """x_{n+1} = x_n + h d_n (DDIM in EDM form)."""
    return iv.x + iv.h * iv.d


def heun(iv: Interval) -> Tensor:
    """Euler, then the trapezoidal correction; an interval ending at t = 0 keeps the Euler step."""
    x_next = iv.x + iv.h * iv.d
    if iv.t_next == 0:
        return x_next
    d_next = iv.slope_at(x_next, iv.t_next)
    return iv.x + iv.h * (0.5 * iv.d + 0.5 * d_next)


def midpoint(iv: Interval) -> Tensor:
    """The slope at the arithmetic midpoint drives the interval."""
    return _intermediate(iv, 0.5 * (iv.t + iv.t_next), a=1.0, c=1.0, restart=False)


def dpm2(iv: Interval) -> Tensor:
    """DPM-Solver-2: the slope at the geometric midpoint drives the interval."""
    return _intermediate(iv, geometric_time(iv.t, iv.t_next, 0.5), a=1.0, c=1.0, restart=False)


def ipndm(iv: Interval) -> Tensor:
    """Adams-Bashforth with equal-step coefficients over the stored slopes."""
    x_next = iv.x + iv.h * adams_bashforth(iv.d, iv.state.slopes, iv.config.max_order)
    iv.state.push_slope(iv.d, iv.t)
    return x_next


def dpmpp2m(iv: Interval) -> Tensor:
    return _dpmpp(iv, 2)


def dpmpp3m(iv: Interval) -> Tensor:
    return _dpmpp(iv, 3)


def amed(iv: Interval) -> Tensor:
    """AMED-Solver: DPM-Solver-2 whose intermediate time, direction scale c and time scale a are learned."""
    r, c, a = iv.predictor()
    return _intermediate(iv, geometric_time(iv.t, iv.t_next, r), a, c, restart=False)


def amed_euler(iv: Interval) -> Tensor:
    """AMED-Plugin on Euler: an Euler step to the learned time s, then one from s to t_{n+1}."""
    r, c, a = iv.predictor()
    return _intermediate(iv, geometric_time(iv.t, iv.t_next, r), a, c, restart=True)


def amed_ipndm(iv: Interval) -> Tensor:
    """AMED-Plugin on iPNDM: iPNDM on the refined grid t_n -> s_n -> t_{n+1}, both slopes joining the
    history. The sub-steps are very unequal, so the Adams-Bashforth weights are those of the actual grid."""
    r, c, a = iv.predictor()
    t, t_next, state, order = iv.t, iv.t_next, iv.state, iv.config.max_order
    s = geometric_time(t, t_next, r)
    x_s = iv.x + (s - t) * uneven_adams_bashforth(iv.d, t, s - t, state.slopes, state.slope_times, order)
    state.push_slope(iv.d, t)
    scale = c * (t_next - s)  # taken before the call reuses buffers
    d_s = iv.slope_at(x_s, s, a * s)
    ab = uneven_adams_bashforth(d_s, s, t_next - s, state.slopes, state.slope_times, order)
    state.push_slope(d_s, s)
    return x_s + scale * ab


def _dpmpp(iv: Interval, max_order: int) -> Tensor:
    """DPM-Solver++ multistep; short schedules (< 10 intervals) lower the order on their last intervals."""
    order = min(max_order, len(iv.state.denoised) + 1)
    intervals = len(iv.t_steps) - 1
    if intervals < 10:
        order = min(order, intervals - iv.n)
    x_next = dpmpp_update(iv.x, iv.t, iv.t_next, iv.denoised, iv.state.denoised, order)
    iv.state.push_denoised(iv.t, iv.denoised)
    return x_next


def _intermediate(iv: Interval, s: float | Tensor, a: float | Tensor, c: float | Tensor, restart: bool) -> Tensor:
    """One extra evaluation at an intermediate time s, whose slope drives the interval.

    restart=False: x_{n+1} = x_n + c (t_{n+1} - t_n) d_s (midpoint, DPM-Solver-2, AMED-Solver).
    restart=True:  x_{n+1} = x_s + c (t_{n+1} - s) d_s (AMED-Plugin on Euler).
    `a` scales only the sigma fed to the network; the slope is still divided by s."""
    x_s = iv.x + (s - iv.t) * iv.d
    scale = c * ((iv.t_next - s) if restart else (iv.t_next - iv.t))  # taken before the call reuses buffers
    d_s = iv.slope_at(x_s, s, a * s)
    return (x_s if restart else iv.x) + scale * d_s
