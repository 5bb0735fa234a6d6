"""The fixed sampler a predictor is trained for and a graph is exported for: one record, carried by
predictor files, ONNX metadata and engine manifests alike, so any one of them is enough to sample."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .errors import AmedError
from .solvers import SolverConfig, make_schedule, nfe_for, points_for_nfe


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
        sigma_min: float,
        sigma_max: float,
        afs: bool,
        rho: float | None = None,
        max_order: int = 4,
    ) -> SamplerConfig:
        """Derive N from the NFE budget (a clear error when the NFE is impossible) and the time points."""
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
    def from_dict(cls, d: dict) -> SamplerConfig:
        """Rebuild and check consistency (NFE vs N vs solver), so a tampered record is refused."""
        try:
            cfg = cls(
                solver=str(d["solver"]),
                nfe=int(d["nfe"]),
                num_points=int(d["num_points"]),
                schedule=str(d["schedule"]),
                sigma_min=float(d["sigma_min"]),
                sigma_max=float(d["sigma_max"]),
                afs=bool(d["afs"]),
                rho=None if d.get("rho") is None else float(d["rho"]),
                max_order=int(d.get("max_order", 4)),
                t_steps=tuple(float(t) for t in d["t_steps"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as e:  # OverflowError: int(inf)
            raise AmedError(f"sampler configuration is incomplete or malformed: {e}") from None
        if nfe_for(cfg.solver, cfg.num_points, cfg.afs) != cfg.nfe or len(cfg.t_steps) != cfg.num_points:
            raise AmedError(
                f"inconsistent sampler configuration: {cfg.solver} with {cfg.num_points} time points "
                f"and afs={cfg.afs} costs {nfe_for(cfg.solver, cfg.num_points, cfg.afs)} NFE, "
                f"record says {cfg.nfe} (with {len(cfg.t_steps)} time points)"
            )
        values = (*cfg.t_steps, cfg.sigma_min, cfg.sigma_max)
        if not all(math.isfinite(v) for v in values):
            raise AmedError("inconsistent sampler configuration: time points and sigma range must be finite")
        if any(a <= b for a, b in zip(cfg.t_steps, cfg.t_steps[1:])) or cfg.t_steps[-1] < 0:
            raise AmedError("inconsistent sampler configuration: time points must decrease")
        return cfg


def sigma_range(net: object) -> tuple[float, float]:
    """The sampling range: EDM's 0.002..80 clipped to what the network declares it supports."""
    lo = max(0.002, float(getattr(net, "sigma_min", 0.0) or 0.0))
    hi = min(80.0, float(getattr(net, "sigma_max", math.inf) or math.inf))
    return lo, hi
