"""The fixed sampler a predictor is trained for and a graph is exported for: one record, carried by
predictor files, ONNX metadata and engine manifests alike, so any one of them is enough to sample."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from .errors import AmedError
from .fields import FieldError, strict_bool, strict_float, strict_int, strict_list, strict_str
from .solvers import SolverConfig, find_solver, get_solver, make_schedule, nfe_for, points_for_nfe
from .solvers.registry import MAX_ORDER, OPTION_NAMES, RENAMED_FORMULAS

MAX_NFE = 1000  # far beyond few-step sampling; a typo such as --nfe 1000000 would otherwise run for hours
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
    t_steps: tuple[float, ...] = field(default=())
    # the solver's options (SolverConfig), its reference's defaults filled in; None where it takes none
    max_order: int | None = None
    predict_x0: bool | None = None
    lower_order_final: bool | None = None
    thresholding: bool | None = None

    @classmethod
    def create(
        cls,
        solver: str,
        nfe: int,
        schedule: str,
        sigmas: tuple[float, float],
        afs: bool,
        rho: float | None = None,
        options: Mapping[str, object] | None = None,
    ) -> SamplerConfig:
        """The one way to make a sampler: N from the NFE budget (a clear error when the NFE is impossible)
        and the time points over `sigmas` = (sigma_min, sigma_max), the network's `sigma_range`;
        `options` are the solver's (SolverConfig's max_order, predict_x0, ...), resolved and recorded."""
        sigma_min, sigma_max = sigmas
        if nfe > MAX_NFE:
            raise AmedError(f"NFE {nfe} is above the maximum of {MAX_NFE} evaluations")
        solver_config = SolverConfig(solver, afs, **(options or {}))
        n = points_for_nfe(solver_config.name, nfe, afs)
        steps = tuple(make_schedule(schedule, n, sigma_min, sigma_max, rho))
        return cls(
            solver_config.name, nfe, n, schedule, sigma_min, sigma_max, afs, rho, steps, **solver_config.options()
        )

    @property
    def solver_config(self) -> SolverConfig:
        return SolverConfig(self.solver, self.afs, **self.solver_options)

    @property
    def solver_options(self) -> dict[str, object]:
        """The options recorded for the solver (the ones it takes)."""
        return {name: getattr(self, name) for name in OPTION_NAMES if getattr(self, name) is not None}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["t_steps"] = list(self.t_steps)
        return d

    @classmethod
    def from_dict(cls, d: object, renamed: bool = False) -> SamplerConfig:
        """Rebuild and check consistency (NFE vs N vs solver), so a tampered record is refused.

        `renamed`: the record predates RENAMED_FORMULAS, so its solver name means the formula that is
        now called by the new name. Options the solver does not take are dropped (older records wrote
        max_order for every solver)."""
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
            if renamed:
                solver = RENAMED_FORMULAS.get(solver, solver)
            taken = getattr(find_solver(solver), "options", {})
            options: dict[str, object] = {}
            if d.get("max_order") is not None and "max_order" in taken:
                options["max_order"] = strict_int(d["max_order"], "max_order", 1, MAX_ORDER)
            for name in OPTION_NAMES[1:]:
                if d.get(name) is not None and name in taken:
                    options[name] = strict_bool(d[name], name)
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
        solver_options = SolverConfig(solver, afs, **options).options()  # unknown solver: a clear error
        cfg = cls(solver, nfe, num_points, schedule, sigma_min, sigma_max, afs, rho, t_steps, **solver_options)
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


def solver_options(options: Mapping[str, object] | None) -> dict[str, object]:
    """The solver options given (None values are "not given": the reference's default), names checked."""
    given = {name: value for name, value in (options or {}).items() if value is not None}
    unknown = sorted(set(given) - set(OPTION_NAMES))
    if unknown:
        raise AmedError(f"unknown solver option {unknown[0]!r}; the options are {', '.join(OPTION_NAMES)}")
    return given


def refuse_other_formula(distilled_for: str, solver: str) -> None:
    """Refuse to run a predictor distilled for one solver with another AMED solver's formula: g_phi learned
    the intermediate times of its own formula, so under another it would be silently wrong. A
    training-free `solver` is not refused (it runs on the network's denoiser output alone)."""
    own, asked = get_solver(distilled_for), get_solver(solver)
    if asked.uses_predictor and asked.name != own.name:
        raise AmedError(
            f"this predictor was distilled for {own.name} ({own.display_name}), not {asked.name}: the formulas "
            f"differ; distil one for {asked.name} (amed-deploy distill --student {asked.name})"
        )


def sigma_range(net: object) -> tuple[float, float]:
    """The sampling range: EDM's range clipped to what the network declares it supports. Every graph
    records it (GraphSpec.sigma_range), so a solver chosen at run time gets the same time points on
    every executor."""
    lo = max(EDM_SIGMA_RANGE[0], float(getattr(net, "sigma_min", 0.0) or 0.0))
    hi = min(EDM_SIGMA_RANGE[1], float(getattr(net, "sigma_max", math.inf) or math.inf))
    return lo, hi
