"""The ODE solver formulas, written once and shared by reference sampling, distillation and every
deployed executor.

The probability-flow ODE in EDM form is dx/dt = d(x, t) = (x - D(x, t)) / t with time t = sigma,
integrated from t_0 = sigma_max down to t_{N-1} = sigma_min. A solver advances one interval
[t_n -> t_{n+1}] at a time through `step`; `sample` runs all intervals. Times are Python floats (they
are fixed per sampler); the AMED predictor's r, c, a are per-sample tensors of shape [B,1,1,1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import AmedError
from .model import Evaluation, Model

# Network evaluations per interval. AMED students put one learned intermediate evaluation inside each
# interval; "amed" is the AMED-Solver (a DPM-Solver-2 whose intermediate time, direction scale c and
# time scale a are predicted), "amed_euler"/"amed_ipndm" are the AMED-Plugin on those solvers, and the
# plugin on DPM-Solver-2 is the AMED-Solver itself ("amed_dpm2" is an alias).
EVALS_PER_INTERVAL = {
    "euler": 1,
    "heun": 2,
    "midpoint": 2,
    "dpm2": 2,
    "ipndm": 1,
    "dpmpp2m": 1,
    "dpmpp3m": 1,
    "amed": 2,
    "amed_euler": 2,
    "amed_ipndm": 2,
}
ALIASES = {"ddim": "euler", "dpm-solver-2": "dpm2", "amed_dpm2": "amed", "dpm-solver++3m": "dpmpp3m"}
PREDICTOR_SOLVERS = ("amed", "amed_euler", "amed_ipndm")

# Adams-Bashforth coefficients for equal steps (iPNDM), newest slope first, orders 1..4.
ADAMS_BASHFORTH = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


@dataclass(frozen=True)
class SolverConfig:
    """Which solver, whether the first interval uses the analytical first step (AFS), and the
    multistep order cap (iPNDM up to 4; DPM-Solver++ takes its order from the name)."""

    name: str
    afs: bool = False
    max_order: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", canonical_solver(self.name))
        if not 1 <= self.max_order <= 4:
            raise AmedError(f"max_order must be 1..4, got {self.max_order}")

    @property
    def uses_predictor(self) -> bool:
        return self.name in PREDICTOR_SOLVERS


def canonical_solver(name: str) -> str:
    """Resolve aliases; raise a clear error for unknown solver names."""
    key = name.lower().replace("-", "_") if name.lower() not in ALIASES else name.lower()
    key = ALIASES.get(key, key)
    if key not in EVALS_PER_INTERVAL:
        known = ", ".join([*EVALS_PER_INTERVAL, *ALIASES])
        raise AmedError(f"unknown solver {name!r}; choose one of {known}")
    return key


def nfe_for(solver: str, num_points: int, afs: bool = False, ends_at_zero: bool = False) -> int:
    """Exact number of network evaluations for N = num_points time points.

    AFS removes the first evaluation; Heun skips its correction on a final interval ending at t = 0."""
    solver = canonical_solver(solver)
    n = EVALS_PER_INTERVAL[solver] * (num_points - 1) - int(afs)
    if solver == "heun" and ends_at_zero:
        n -= 1
    return n


def points_for_nfe(solver: str, nfe: int, afs: bool) -> int:
    """The number of time points N that spends exactly `nfe` evaluations, or a clear error."""
    solver = canonical_solver(solver)
    per = EVALS_PER_INTERVAL[solver]
    intervals, rest = divmod(nfe + int(afs), per)
    if nfe < 1 or rest or intervals < 1:
        if per == 2:
            parity = "odd" if afs else "even"
            hint = (
                f"{solver} costs 2 evaluations per interval{' minus 1 with AFS' if afs else ''}, "
                f"so NFE must be {parity} and at least {1 if afs else 2}"
            )
            other = "without" if afs else "with"
            raise AmedError(f"NFE {nfe} is impossible for {solver}: {hint} (or try {other} AFS)")
        raise AmedError(f"NFE {nfe} is impossible for {solver}: need at least {1 + int(afs)}")
    return intervals + 1


@dataclass
class SolverState:
    """What multistep solvers carry between intervals, and the evaluation count."""

    slopes: list[Tensor] = field(default_factory=list)  # iPNDM and its plugin: newest last
    slope_times: list[float | Tensor] = field(default_factory=list)  # the plugin: where each slope was taken
    denoised: list[tuple[float, Tensor]] = field(default_factory=list)  # DPM-Solver++: (t, D)
    nfe: int = 0


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


def _sigmas(x: Tensor, value: float | Tensor) -> Tensor:
    """A per-sample [B] sigma tensor from a scalar or a [B,1,1,1] tensor."""
    if isinstance(value, Tensor):
        return value.reshape(x.shape[0])
    return torch.full((x.shape[0],), value, dtype=x.dtype, device=x.device)


def _call(model: Model, state: SolverState, x: Tensor, t: float | Tensor, t_next: float) -> Evaluation:
    state.nfe += 1
    return model(x, _sigmas(x, t), _sigmas(x, t_next))


def _predictor(ev: Evaluation, solver: str) -> tuple[Tensor, Tensor | float, Tensor | float]:
    if ev.r is None:
        raise AmedError(f"solver {solver} needs a model with an AMED predictor (r output)")
    return ev.r, (1.0 if ev.c is None else ev.c), (1.0 if ev.a is None else ev.a)


def step(model: Model, x: Tensor, t_steps: Sequence[float], n: int, solver: SolverConfig, state: SolverState) -> Tensor:
    """Advance x over interval n, from t_steps[n] to t_steps[n+1].

    With AFS the first interval (n = 0) uses the analytical slope instead of a network call."""
    t, t_next = t_steps[n], t_steps[n + 1]
    name = solver.name
    if solver.afs and n == 0:
        d = afs_slope(x, t)
        denoised = x - t * d
        ev = model.predict_without_feature(_sigmas(x, t), _sigmas(x, t_next)) if solver.uses_predictor else None
    else:
        ev = _call(model, state, x, t, t_next)
        denoised = ev.denoised
        d = slope(x, denoised, t)
    h = t_next - t

    if name == "euler":
        return x + h * d
    if name == "heun":
        x_next = x + h * d
        if t_next == 0:
            return x_next
        d_next = slope(x_next, _call(model, state, x_next, t_next, t_next).denoised, t_next)
        return x + h * (0.5 * d + 0.5 * d_next)
    if name in ("midpoint", "dpm2"):
        s = 0.5 * (t + t_next) if name == "midpoint" else geometric_time(t, t_next, 0.5)
        return _intermediate(model, state, x, d, t, t_next, s, a=1.0, c=1.0, restart=False)
    if name == "ipndm":
        x_next = x + h * adams_bashforth(d, state.slopes, solver.max_order)
        _push(state.slopes, d)
        return x_next
    if name in ("dpmpp2m", "dpmpp3m"):
        order = min(2 if name == "dpmpp2m" else 3, len(state.denoised) + 1)
        intervals = len(t_steps) - 1
        if intervals < 10:  # lower the order on the last intervals of short schedules (DPM-Solver++)
            order = min(order, intervals - n)
        x_next = dpmpp_update(x, t, t_next, denoised, state.denoised, order)
        _push(state.denoised, (t, denoised.clone()))  # executors reuse their output buffers
        return x_next
    r, c, a = _predictor(ev, name)
    s = geometric_time(t, t_next, r)
    if name == "amed":
        return _intermediate(model, state, x, d, t, t_next, s, a, c, restart=False)
    if name == "amed_euler":
        return _intermediate(model, state, x, d, t, t_next, s, a, c, restart=True)
    # amed_ipndm: iPNDM on the refined grid t_n -> s_n -> t_{n+1}, both slopes joining the history. The
    # sub-steps are very unequal, so the Adams-Bashforth weights are those of the actual grid.
    x_s = x + (s - t) * uneven_adams_bashforth(d, t, s - t, state.slopes, state.slope_times, solver.max_order)
    _push(state.slopes, d)
    _push(state.slope_times, t)
    scale = c * (t_next - s)
    d_s = slope(x_s, _call(model, state, x_s, a * s, t_next).denoised, s)
    ab = uneven_adams_bashforth(d_s, s, t_next - s, state.slopes, state.slope_times, solver.max_order)
    _push(state.slopes, d_s)
    _push(state.slope_times, s)
    return x_s + scale * ab


def _intermediate(
    model: Model,
    state: SolverState,
    x: Tensor,
    d: Tensor,
    t: float,
    t_next: float,
    s: float | Tensor,
    a: float | Tensor,
    c: float | Tensor,
    restart: bool,
) -> Tensor:
    """One extra evaluation at an intermediate time s, whose slope drives the interval.

    restart=False: x_{n+1} = x_n + c (t_{n+1} - t_n) d_s (midpoint, DPM-Solver-2, AMED-Solver).
    restart=True:  x_{n+1} = x_s + c (t_{n+1} - s) d_s (AMED-Plugin on Euler).
    `a` scales only the sigma fed to the network; the slope is still divided by s."""
    x_s = x + (s - t) * d
    scale = c * ((t_next - s) if restart else (t_next - t))  # taken before the call reuses buffers
    d_s = slope(x_s, _call(model, state, x_s, a * s, t_next).denoised, s)
    return (x_s if restart else x) + scale * d_s


def _push(history: list, item: object, keep: int = 3) -> None:
    history.append(item)
    del history[:-keep]


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
