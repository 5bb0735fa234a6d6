"""The fixed sampler a predictor is trained for and a graph is exported for: one record, carried by
predictor files, ONNX metadata and engine manifests alike, so any one of them is enough to sample."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .errors import AmedError
from .fields import FieldError, strict_bool, strict_float, strict_int, strict_list, strict_str
from .solvers import SolverConfig, make_schedule, nfe_for, points_for_nfe

MAX_NFE = 1000  # far beyond few-step sampling; a typo such as --nfe 1000000 would otherwise run for hours
MAX_ORDER = 4  # multistep solvers' highest order
MAX_SIGMA = 1e5  # EDM samples from sigma 80
TIME_TOLERANCE = 1e-6  # relative slack of t_steps[0] over sigma_max (rounding in the schedule)
DEFAULT_SCHEDULE = "polynomial"  # a training-free solver's time points unless told otherwise (EDM's)
EDM_SIGMA_RANGE = (0.002, 80.0)  # EDM's sampling range, clipped to what a network supports


@dataclass(frozen=True)
class SamplerConfig:
    """Solver, NFE and time points of one fixed-NFE sampler."""

    solver: str
    nfe: int
    num_points: int
    schedule: str
    sigma_min: float
    sigma_max: float
    afs: bool
    rho: float | None = None
    max_order: int = 4
    t_steps: tuple[float, ...] = field(default=())

    @classmethod
    def create(
        cls,
        solver: str,
        nfe: int,
        schedule: str,
        sigmas: tuple[float, float],
        afs: bool,
        rho: float | None = None,
        max_order: int = 4,
    ) -> SamplerConfig:
        """The one way to make a sampler: N from the NFE budget (a clear error when the NFE is impossible)
        and the time points over `sigmas` = (sigma_min, sigma_max), the network's `sigma_range`."""
        sigma_min, sigma_max = sigmas
        if nfe > MAX_NFE:
            raise AmedError(f"NFE {nfe} is above the maximum of {MAX_NFE} evaluations")
        canonical = SolverConfig(solver, afs, max_order).name
        n = points_for_nfe(canonical, nfe, afs)
        steps = tuple(make_schedule(schedule, n, sigma_min, sigma_max, rho))
        return cls(canonical, nfe, n, schedule, sigma_min, sigma_max, afs, rho, max_order, steps)

    @property
    def solver_config(self) -> SolverConfig:
        return SolverConfig(self.solver, self.afs, self.max_order)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["t_steps"] = list(self.t_steps)
        return d

    @classmethod
    def from_dict(cls, d: object) -> SamplerConfig:
        """Rebuild and check consistency (NFE vs N vs solver), so a tampered record is refused."""
        prefix = "sampler configuration is incomplete or malformed"
        if not isinstance(d, dict):
            raise AmedError(f"{prefix}: not a JSON object")
        try:
            solver = strict_str(d["solver"], "solver")
            nfe = strict_int(d["nfe"], "nfe", 1, MAX_NFE)
            num_points = strict_int(d["num_points"], "num_points", 2, MAX_NFE + 1)
            schedule = strict_str(d["schedule"], "schedule")
            afs = strict_bool(d["afs"], "afs")
            rho = None if d.get("rho") is None else strict_float(d["rho"], "rho")
            max_order = strict_int(d.get("max_order", MAX_ORDER), "max_order", 1, MAX_ORDER)
            raw = (d["sigma_min"], d["sigma_max"], strict_list(d["t_steps"], "t_steps"))
        except FieldError as e:
            raise AmedError(f"{prefix}: {e}") from None
        except KeyError as e:
            raise AmedError(f"{prefix}: missing {e}") from None
        try:  # the times: finite, positive, bounded (t_steps[0] may exceed sigma_max by rounding only)
            sigma_min = strict_float(raw[0], "sigma_min", 0.0, MAX_SIGMA)
            sigma_max = strict_float(raw[1], "sigma_max", 0.0, MAX_SIGMA)
            top = sigma_max * (1 + TIME_TOLERANCE)
            t_steps = tuple(strict_float(t, "time point", 0.0, top) for t in raw[2])
        except FieldError as e:
            raise AmedError(f"inconsistent sampler configuration: {e}") from None
        cfg = cls(solver, nfe, num_points, schedule, sigma_min, sigma_max, afs, rho, max_order, t_steps)
        if not 0 < cfg.sigma_min < cfg.sigma_max:
            raise AmedError(
                f"inconsistent sampler configuration: need 0 < sigma_min < sigma_max, "
                f"got {cfg.sigma_min:g}, {cfg.sigma_max:g}"
            )
        if nfe_for(cfg.solver, cfg.num_points, cfg.afs) != cfg.nfe or len(cfg.t_steps) != cfg.num_points:
            raise AmedError(
                f"inconsistent sampler configuration: {cfg.solver} with {cfg.num_points} time points "
                f"and afs={cfg.afs} costs {nfe_for(cfg.solver, cfg.num_points, cfg.afs)} NFE, "
                f"record says {cfg.nfe} (with {len(cfg.t_steps)} time points)"
            )
        if any(a <= b for a, b in zip(cfg.t_steps, cfg.t_steps[1:])):
            raise AmedError("inconsistent sampler configuration: time points must decrease")
        return cfg


def sigma_range(net: object) -> tuple[float, float]:
    """The sampling range: EDM's range clipped to what the network declares it supports. Every graph
    records it (GraphSpec.sigma_range), so a solver chosen at run time gets the same time points on
    every executor."""
    lo = max(EDM_SIGMA_RANGE[0], float(getattr(net, "sigma_min", 0.0) or 0.0))
    hi = min(EDM_SIGMA_RANGE[1], float(getattr(net, "sigma_max", math.inf) or math.inf))
    return lo, hi
