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
from .formulas import (
    adams_bashforth,
    afs_slope,
    dpmpp_update,
    dynamic_threshold,
    geometric_time,
    slope,
    uneven_adams_bashforth,
)
from .model import Evaluation, Model

if TYPE_CHECKING:
    from .registry import SolverConfig

HISTORY = 3  # multistep solvers keep this many past slopes or model outputs (order 4 needs 3)


@dataclass
class SolverState:
    """What multistep solvers carry between intervals, and the evaluation count."""

    slopes: list[Tensor] = field(default_factory=list)  # iPNDM, LMS and the iPNDM plugins: newest last
    slope_times: list[float | Tensor] = field(default_factory=list)  # where each slope was taken
    outputs: list[tuple[float | Tensor, Tensor]] = field(default_factory=list)  # DPM-Solver++: (t, D or d)
    calls: list[int] = field(default_factory=list)  # points per sample of each network call, in order

    @property
    def nfe(self) -> int:
        """Network calls, one after another."""
        return len(self.calls)

    @property
    def evaluations(self) -> int:
        """Network evaluations per sample: a parallel call of K points counts K."""
        return sum(self.calls)

    def push_slope(self, d: Tensor, t: float | Tensor) -> None:
        """Remember a slope and the time it was taken at, dropping the oldest beyond HISTORY."""
        _push(self.slopes, d)
        _push(self.slope_times, t)

    def push_output(self, t: float | Tensor, output: Tensor) -> None:
        """Remember DPM-Solver++'s model output at t; copied, because executors reuse their output buffers."""
        _push(self.outputs, (t, output.clone()))

    def detach_history(self) -> None:
        """Turn the history into plain data: distillation trains one interval at a time, so no gradient
        may flow back into an earlier interval's step through a stored slope or time."""
        self.slopes = [s.detach() for s in self.slopes]
        self.slope_times = [_detached(v) for v in self.slope_times]
        self.outputs = [(_detached(t), v.detach()) for t, v in self.outputs]


def _detached(v: float | Tensor) -> float | Tensor:
    return v.detach() if isinstance(v, Tensor) else v


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

    def denoise_at(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """D(x, sigma) from one more network call (valid until the next call: executors reuse buffers)."""
        return _call(self.model, self.state, x, sigma, self.t_next).denoised

    def denoise_points(self, x: Tensor, sigma: Tensor) -> Tensor:
        """D at K points per sample in ONE network call: x [B*K,...] and sigma [B*K], sample-major (sample
        b's points adjacent), each sample's conditioning repeated K times by the model."""
        self.state.calls.append(x.shape[0] // self.x.shape[0])
        return self.model.denoise_points(x, sigma)

    def slope_at(self, x: Tensor, s: float | Tensor, sigma: float | Tensor | None = None) -> Tensor:
        """The slope at (x, s) from one more network call. The network is fed `sigma` (default s; the
        AMED time scale a moves it), the slope is still divided by s."""
        return slope(x, self.denoise_at(x, s if sigma is None else sigma), s)

    @property
    def to_zero(self) -> bool:
        """This interval ends at t = 0 (k-diffusion's grids do): every solver then takes its one-evaluation
        step there, since an intermediate time or a log-time step would be 0 or infinite."""
        return self.t_next == 0

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
    state.calls.append(1)
    return model(x, _sigmas(x, t), _sigmas(x, t_next))


def step(model: Model, x: Tensor, t_steps: Sequence[float], n: int, solver: SolverConfig, state: SolverState) -> Tensor:
    """Advance x over interval n, from t_steps[n] to t_steps[n+1], with the solver's step function.

    With AFS the first interval (n = 0) uses the analytical slope instead of a network call."""
    t, t_next = t_steps[n], t_steps[n + 1]
    spec = solver.spec
    if solver.afs and n == 0:
        d = afs_slope(x, t)
        denoised = x - t * d
        amed = spec.predictor == "amed"
        ev = model.predict_without_feature(_sigmas(x, t), _sigmas(x, t_next)) if amed else None
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
    """k-diffusion `sample_euler`: x_{n+1} = x_n + h d_n (DDIM in EDM form)."""
    return iv.x + iv.h * iv.d


def heun(iv: Interval) -> Tensor:
    """EDM `edm_sampler` (S_churn = 0): Euler, then the trapezoidal correction; an interval ending at
    t = 0 keeps the Euler step."""
    x_next = iv.x + iv.h * iv.d
    if iv.to_zero:
        return x_next
    d_next = iv.slope_at(x_next, iv.t_next)
    return iv.x + iv.h * (0.5 * iv.d + 0.5 * d_next)


def midpoint(iv: Interval) -> Tensor:
    """EDM `ablation_sampler` (solver='heun', alpha = 0.5): the slope at the arithmetic midpoint drives
    the interval; its last step, to t = 0, is Euler."""
    if iv.to_zero:
        return euler(iv)
    return _intermediate(iv, 0.5 * (iv.t + iv.t_next), a=1.0, c=1.0, restart=False)


def dpm2(iv: Interval) -> Tensor:
    """diff-sampler `dpm_2_sampler` (r = 1/2): the slope at the geometric midpoint drives the interval;
    a step to t = 0 is Euler, as k-diffusion's `sample_dpm_2`."""
    if iv.to_zero:
        return euler(iv)
    return _intermediate(iv, geometric_time(iv.t, iv.t_next, 0.5), a=1.0, c=1.0, restart=False)


def ipndm(iv: Interval) -> Tensor:
    """diff-sampler `ipndm_sampler`: Adams-Bashforth with equal-step coefficients over the stored slopes."""
    x_next = iv.x + iv.h * adams_bashforth(iv.d, iv.state.slopes, iv.config.max_order)
    iv.state.push_slope(iv.d, iv.t)
    return x_next


def lms(iv: Interval) -> Tensor:
    """k-diffusion `sample_lms`: linear multistep whose coefficients integrate the Lagrange polynomial
    through the stored slopes over the actual sigma grid (order = max_order, 4 by default)."""
    x_next = iv.x + iv.h * _uneven_ab(iv, iv.d, iv.t, iv.h)
    iv.state.push_slope(iv.d, iv.t)
    return x_next


def dpmpp(iv: Interval) -> Tensor:
    """diff-sampler `dpm_pp_sampler`; its max_order (2 for DPM-Solver++(2M), 3 for 3M) comes from the config."""
    return _dpmpp(iv, third_weight=1.0)


def dpmpp3m_exact(iv: Interval) -> Tensor:
    """DPM-Solver++(3M) with the second difference weighted by 2 phi_3: one step is then exact when the
    model output is quadratic in lambda (the published weight costs that order)."""
    return _dpmpp(iv, third_weight=2.0)


def amed(iv: Interval) -> Tensor:
    """amed-solver `amed_sampler`: DPM-Solver-2 whose intermediate time, direction scale c and time
    scale a are learned: x_{n+1} = x_n + c h d_s."""
    if iv.to_zero:
        return euler(iv)
    r, c, a = iv.predictor()
    return _intermediate(iv, geometric_time(iv.t, iv.t_next, r), a, c, restart=False)


def amed_euler(iv: Interval) -> Tensor:
    """amed-solver `euler_sampler` (AMED-Plugin on Euler): an Euler step to the learned time s, then one
    from s to t_{n+1} with the slope there, scaled by c."""
    if iv.to_zero:
        return euler(iv)
    r, c, a = iv.predictor()
    return _intermediate(iv, geometric_time(iv.t, iv.t_next, r), a, c, restart=True)


def amed_dpm2(iv: Interval) -> Tensor:
    """amed-solver `dpm_2_sampler` (AMED-Plugin on DPM-Solver-2):
    x_{n+1} = x_n + c h [(1/(2r)) d_s + (1 - 1/(2r)) d_n], the AMED-Solver only at r = 1/2."""
    if iv.to_zero:
        return euler(iv)
    r, c, a = iv.predictor()
    s = geometric_time(iv.t, iv.t_next, r)
    w, scale = 0.5 / r, c * iv.h  # taken before the call reuses the predictor's buffers
    x_s = iv.x + (s - iv.t) * iv.d
    d_s = iv.slope_at(x_s, s, a * s)
    return iv.x + scale * (w * d_s + (1 - w) * iv.d)


def amed_ipndm(iv: Interval) -> Tensor:
    """amed-solver `ipndm_sampler` (AMED-Plugin on iPNDM): iPNDM's equal-step Adams-Bashforth on the
    refined grid t_n -> s_n -> t_{n+1}, both slopes joining the history, c scaling the second sub-step."""
    if iv.to_zero:
        return ipndm(iv)
    r, c, a = iv.predictor()
    state, order = iv.state, iv.config.max_order
    s = geometric_time(iv.t, iv.t_next, r)
    x_s = iv.x + (s - iv.t) * adams_bashforth(iv.d, state.slopes, order)
    state.push_slope(iv.d, iv.t)
    scale = c * (iv.t_next - s)  # taken before the call reuses buffers
    d_s = iv.slope_at(x_s, s, a * s)
    x_next = x_s + scale * adams_bashforth(d_s, state.slopes, order)
    state.push_slope(d_s, s)
    return x_next


def amed_ipndm_uneven(iv: Interval) -> Tensor:
    """The AMED-Plugin on iPNDM with the Adams-Bashforth weights of the actual, very uneven refined grid
    (LMS's) instead of iPNDM's equal-step ones; identical to `amed_ipndm` on equal sub-steps."""
    if iv.to_zero:
        return lms(iv)
    r, c, a = iv.predictor()
    t, t_next, state = iv.t, iv.t_next, iv.state
    s = geometric_time(t, t_next, r)
    x_s = iv.x + (s - t) * _uneven_ab(iv, iv.d, t, s - t)
    state.push_slope(iv.d, t)
    scale = c * (t_next - s)  # taken before the call reuses buffers
    d_s = iv.slope_at(x_s, s, a * s)
    x_next = x_s + scale * _uneven_ab(iv, d_s, s, t_next - s)
    state.push_slope(d_s, s)
    return x_next


def amed_dpmpp(iv: Interval) -> Tensor:
    """amed-solver `dpm_pp_sampler` (AMED-Plugin on DPM-Solver++): the multistep update on the combined
    grid t_0, s_0, t_1, ..., its orders counted over the 2(N-1) sub-steps, c scaling the second one."""
    config, state = iv.config, iv.state
    m = _dpmpp_output(iv, iv.x, iv.denoised, iv.d)
    if iv.to_zero:
        x_next = _dpmpp_update(iv, iv.x, iv.t, 0.0, m, 1)
        state.push_output(iv.t, m)
        return x_next
    r, c, a = iv.predictor()
    s = geometric_time(iv.t, iv.t_next, r)
    c = c.clone() if isinstance(c, Tensor) else c  # the call below reuses the predictor's buffers
    sub_steps, k = 2 * (len(iv.t_steps) - 1), 2 * iv.n + 1
    x_s = _dpmpp_update(iv, iv.x, iv.t, s, m, _dpmpp_order(config, k, sub_steps))
    state.push_output(iv.t, m)
    d_s = iv.denoise_at(x_s, a * s)
    m_s = _dpmpp_output(iv, x_s, d_s, slope(x_s, d_s, s))
    x_next = _dpmpp_update(iv, x_s, s, iv.t_next, m_s, _dpmpp_order(config, k + 1, sub_steps), scale=c)
    state.push_output(s, m_s)
    return x_next


def epd(iv: Interval) -> Tensor:
    """EPD-Solver `epd_parallel_sampler`: K points placed by Euler from (x_n, d_n) at learned times,
    evaluated in one batched call; x_{n+1} = x_n + h sum_k lambda_k c_k g_k (d_n only places the points).
    A step to t = 0 is Euler (the reference's grids end at sigma_min)."""
    if iv.to_zero:
        return euler(iv)
    return _parallel_points(iv, iv.d)


def epd_ipndm(iv: Interval) -> Tensor:
    """EPD-Plugin, `ipndm_sampler` with an EPD predictor: the K points are placed along iPNDM's
    Adams-Bashforth direction, the update is EPD's, and only d_n joins the history."""
    if iv.to_zero:
        return ipndm(iv)
    x_next = _parallel_points(iv, adams_bashforth(iv.d, iv.state.slopes, iv.config.max_order))
    iv.state.push_slope(iv.d, iv.t)
    return x_next


def _parallel_points(iv: Interval, direction: Tensor) -> Tensor:
    """EPD's update along `direction`: tau_k = t_{n+1}^{r_k} t_n^{1 - r_k}, x_k = x_n + (tau_k - t_n)
    direction, g_k = (x_k - D(x_k, a_k tau_k)) / tau_k from one call of batch B*K, then
    x_{n+1} = x_n + h sum_k lambda_k c_k g_k."""
    row = iv.model.epd_row(iv.n)
    tau = geometric_time(iv.t, iv.t_next, row.r)  # [K]
    batch, points = iv.x.shape[0], tau.shape[0]
    per_point = (1, points) + (1,) * (iv.x.dim() - 1)  # [1,K,1,1,1]: broadcast over samples and pixels
    x_k = (iv.x.unsqueeze(1) + (tau - iv.t).view(per_point) * direction.unsqueeze(1)).flatten(0, 1)
    weight = (row.weight * row.c).view(per_point)  # taken before the call reuses buffers
    denoised = iv.denoise_points(x_k, (row.a * tau).repeat(batch))
    g = (x_k - denoised).view(batch, points, *iv.x.shape[1:]) / tau.view(per_point)
    return iv.x + iv.h * (weight * g).sum(1)


def _dpmpp(iv: Interval, third_weight: float) -> Tensor:
    """One DPM-Solver++ multistep interval; the order ramps up and, with lower_order_final, down again."""
    order = 1 if iv.to_zero else _dpmpp_order(iv.config, iv.n + 1, len(iv.t_steps) - 1)
    m = _dpmpp_output(iv, iv.x, iv.denoised, iv.d)
    x_next = _dpmpp_update(iv, iv.x, iv.t, iv.t_next, m, order, third_weight=third_weight)
    iv.state.push_output(iv.t, m)
    return x_next


def _dpmpp_order(config: SolverConfig, k: int, steps: int) -> int:
    """diff-sampler's order for (sub-)step k = 1..steps: k while k < max_order, then max_order; with
    lower_order_final, never more than the steps left (steps + 1 - k)."""
    top = config.max_order
    if config.lower_order_final:
        return k if k < top else min(top, steps + 1 - k)
    return min(top, k)


def _dpmpp_output(iv: Interval, x: Tensor, denoised: Tensor, d: Tensor) -> Tensor:
    """What DPM-Solver++ remembers: D (thresholded when asked) for data prediction, else the slope."""
    if not iv.config.predict_x0:
        return d
    return dynamic_threshold(denoised) if iv.config.thresholding else denoised


def _dpmpp_update(
    iv: Interval,
    x: Tensor,
    t: float | Tensor,
    t_next: float | Tensor,
    m: Tensor,
    order: int,
    *,
    scale: float | Tensor = 1.0,
    third_weight: float = 1.0,
) -> Tensor:
    return dpmpp_update(
        x, t, t_next, m, iv.state.outputs, order,
        predict_x0=iv.config.predict_x0, scale=scale, third_weight=third_weight,
    )  # fmt: skip


def _uneven_ab(iv: Interval, d: Tensor, t: float | Tensor, h: float | Tensor) -> Tensor:
    return uneven_adams_bashforth(d, t, h, iv.state.slopes, iv.state.slope_times, iv.config.max_order)


def _intermediate(iv: Interval, s: float | Tensor, a: float | Tensor, c: float | Tensor, restart: bool) -> Tensor:
    """One extra evaluation at an intermediate time s, whose slope drives the interval.

    restart=False: x_{n+1} = x_n + c (t_{n+1} - t_n) d_s (midpoint, DPM-Solver-2, AMED-Solver).
    restart=True:  x_{n+1} = x_s + c (t_{n+1} - s) d_s (AMED-Plugin on Euler).
    `a` scales only the sigma fed to the network; the slope is still divided by s."""
    x_s = iv.x + (s - iv.t) * iv.d
    scale = c * ((iv.t_next - s) if restart else (iv.t_next - iv.t))  # taken before the call reuses buffers
    d_s = iv.slope_at(x_s, s, a * s)
    return (x_s if restart else iv.x) + scale * d_s
