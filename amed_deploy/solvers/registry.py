"""Every solver the package knows, one entry each; NFE accounting, name lookup, options, the CLI's
choices and the evaluation tables all derive from these entries. Adding a solver is one step function
in `steps.py` and one entry here.

A solver named after a published one computes what its `reference` computes, with that reference's
option names and defaults. The project's own variants have names of their own (`dpmpp3m_exact`,
`amed_ipndm_uneven`) and say what differs. AMED students put one learned intermediate evaluation inside
each interval: "amed" is the AMED-Solver (a DPM-Solver-2 whose intermediate time, direction scale c and
time scale a are predicted), the "amed_<base>" solvers are the AMED-Plugin on those base solvers; the
plugin on DPM-Solver-2 ("amed_dpm2") weights its two slopes and equals the AMED-Solver only at r = 1/2.
EPD students ("epd", "epd_ipndm") learn a per-interval table instead: K points placed from the interval's
first evaluation, evaluated in one batched call and combined with learned simplex weights; their NFE is
the number of sequential calls, as the EPD paper reports it ("parallel NFE"), and `evaluations_for`
counts every point.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..errors import AmedError
from . import steps
from .steps import StepFunction


@dataclass(frozen=True, kw_only=True)
class Solver:
    """One solver: its names, where its formula comes from, what it costs and needs, and its step."""

    name: str  # canonical, as recorded in sampler configs, predictor files and results
    display_name: str  # tables and plots
    reference: str  # the published implementation it follows
    evals_per_interval: int  # network calls one after another (the NFE, "parallel NFE" for EPD)
    predictor: str | None = None  # what it learns: "amed" (g_phi on a U-Net feature) or "epd" (a table)
    parallel_points: int = 1  # points its last call of an interval evaluates at once (EPD's K)
    multistep: bool = False  # carries history in SolverState from one interval to the next
    aliases: tuple[str, ...] = ()
    options: Mapping[str, object] = field(default_factory=dict)  # the options it takes, reference defaults
    step: StepFunction

    @property
    def uses_predictor(self) -> bool:
        """A learned solver: needs a distilled predictor file."""
        return self.predictor is not None

    @property
    def evaluations_per_interval(self) -> int:
        """Network evaluations per sample and interval: the K points of a parallel call each count."""
        return self.evals_per_interval - 1 + self.parallel_points

    @property
    def evals_saved_at_zero(self) -> int:
        """Evaluations a final interval ending at t = 0 skips: every solver takes a one-evaluation step there."""
        return self.evals_per_interval - 1


OPTION_NAMES = ("max_order", "predict_x0", "lower_order_final", "thresholding")
MAX_ORDER = 4  # the highest multistep order any solver has (HISTORY in steps.py keeps order - 1 outputs)


def _multistep_order(order: int) -> Mapping[str, object]:
    return MappingProxyType({"max_order": order})


def _dpmpp_options(order: int) -> Mapping[str, object]:
    """diff-sampler's `dpm_pp_sampler` defaults; thresholding None means: on with data prediction."""
    return MappingProxyType({"max_order": order, "predict_x0": True, "lower_order_final": True, "thresholding": None})


def _table(*solvers: Solver) -> Mapping[str, Solver]:
    """The entries by canonical name, in table order; refuses a name or alias given twice."""
    seen: set[str] = set()
    for solver in solvers:
        for key in (solver.name, *solver.aliases):
            if key in seen:
                raise ValueError(f"solver name {key!r} is registered twice")
            seen.add(key)
    return MappingProxyType({solver.name: solver for solver in solvers})


DIFF_SOLVERS = "diff-sampler diff-solvers-main/solvers.py"
AMED_SOLVERS = "diff-sampler amed-solver-main/solvers_amed.py"
EPD_SOLVERS = "BeierZhu/EPD@94c00d0 (branch EPD-Solver) solvers.py"

SOLVERS = _table(
    Solver(
        name="euler",
        display_name="Euler (DDIM)",
        reference="k-diffusion sampling.py sample_euler",
        evals_per_interval=1,
        aliases=("ddim",),
        step=steps.euler,
    ),
    Solver(
        name="heun",
        display_name="EDM Heun",
        reference="edm generate.py edm_sampler (S_churn = 0)",
        evals_per_interval=2,
        step=steps.heun,
    ),
    Solver(
        name="midpoint",
        display_name="Midpoint",
        reference="edm generate.py ablation_sampler (solver='heun', alpha=0.5)",
        evals_per_interval=2,
        step=steps.midpoint,
    ),
    Solver(
        name="dpm2",
        display_name="DPM-Solver-2",
        reference=f"{DIFF_SOLVERS} dpm_2_sampler (r = 0.5); to t = 0 as k-diffusion sample_dpm_2",
        evals_per_interval=2,
        aliases=("dpm-solver-2",),
        step=steps.dpm2,
    ),
    Solver(
        name="ipndm",
        display_name="iPNDM",
        reference=f"{DIFF_SOLVERS} ipndm_sampler",
        evals_per_interval=1,
        multistep=True,
        options=_multistep_order(4),
        step=steps.ipndm,
    ),
    Solver(
        name="lms",
        display_name="LMS",
        reference="k-diffusion sampling.py sample_lms (its order is max_order here)",
        evals_per_interval=1,
        multistep=True,
        options=_multistep_order(4),
        step=steps.lms,
    ),
    Solver(
        name="dpmpp2m",
        display_name="DPM-Solver++(2M)",
        reference=f"{DIFF_SOLVERS} dpm_pp_sampler (max_order=2); k-diffusion sample_dpmpp_2m with "
        "lower_order_final and thresholding off",
        evals_per_interval=1,
        multistep=True,
        aliases=("dpm-solver++2m",),
        options=_dpmpp_options(2),
        step=steps.dpmpp,
    ),
    Solver(
        name="dpmpp3m",
        display_name="DPM-Solver++(3M)",
        reference=f"{DIFF_SOLVERS} dpm_pp_sampler (max_order=3)",
        evals_per_interval=1,
        multistep=True,
        aliases=("dpm-solver++3m",),
        options=_dpmpp_options(3),
        step=steps.dpmpp,
    ),
    Solver(
        name="dpmpp3m_exact",
        display_name="DPM-Solver++(3M), exact quadratic weight",
        reference=f"ours: {DIFF_SOLVERS} dpm_pp_sampler (max_order=3) with the second difference weighted 2 phi_3",
        evals_per_interval=1,
        multistep=True,
        options=_dpmpp_options(3),
        step=steps.dpmpp3m_exact,
    ),
    Solver(
        name="amed",
        display_name="AMED-Solver",
        reference=f"{AMED_SOLVERS} amed_sampler",
        evals_per_interval=2,
        predictor="amed",
        step=steps.amed,
    ),
    Solver(
        name="amed_euler",
        display_name="AMED-Plugin (Euler)",
        reference=f"{AMED_SOLVERS} euler_sampler",
        evals_per_interval=2,
        predictor="amed",
        step=steps.amed_euler,
    ),
    Solver(
        name="amed_dpm2",
        display_name="AMED-Plugin (DPM-Solver-2)",
        reference=f"{AMED_SOLVERS} dpm_2_sampler",
        evals_per_interval=2,
        predictor="amed",
        step=steps.amed_dpm2,
    ),
    Solver(
        name="amed_ipndm",
        display_name="AMED-Plugin (iPNDM)",
        reference=f"{AMED_SOLVERS} ipndm_sampler",
        evals_per_interval=2,
        predictor="amed",
        multistep=True,
        options=_multistep_order(4),
        step=steps.amed_ipndm,
    ),
    Solver(
        name="amed_ipndm_uneven",
        display_name="AMED-Plugin (iPNDM), uneven-grid weights",
        reference=f"ours: {AMED_SOLVERS} ipndm_sampler with the Adams-Bashforth weights of the actual grid",
        evals_per_interval=2,
        predictor="amed",
        multistep=True,
        options=_multistep_order(4),
        step=steps.amed_ipndm_uneven,
    ),
    Solver(
        name="amed_dpmpp",
        display_name="AMED-Plugin (DPM-Solver++)",
        reference=f"{AMED_SOLVERS} dpm_pp_sampler",
        evals_per_interval=2,
        predictor="amed",
        multistep=True,
        options=_dpmpp_options(3),
        step=steps.amed_dpmpp,
    ),
    Solver(
        name="epd",
        display_name="EPD-Solver",
        reference=f"{EPD_SOLVERS} epd_parallel_sampler (K = 2)",
        evals_per_interval=2,
        predictor="epd",
        parallel_points=2,
        step=steps.epd,
    ),
    Solver(
        name="epd_ipndm",
        display_name="EPD-Plugin (iPNDM)",
        reference=f"{EPD_SOLVERS} ipndm_sampler with an EPD predictor (K = 2; max_order 3 as every released "
        "plugin checkpoint)",
        evals_per_interval=2,
        predictor="epd",
        parallel_points=2,
        multistep=True,
        aliases=("epd-plugin",),
        options=_multistep_order(3),
        step=steps.epd_ipndm,
    ),
)
# Names whose formula changed: a record written before (predictor file format 1, graph format 2 and
# older) meant the formula that now has its own name. (No record held a training-free solver.)
RENAMED_FORMULAS = MappingProxyType({"amed_ipndm": "amed_ipndm_uneven"})
_ALIASES = {alias: solver.name for solver in SOLVERS.values() for alias in solver.aliases}


def find_solver(name: str) -> Solver | None:
    """The entry a user-typed name means (any case; '-' for '_'; aliases), or None."""
    low = name.lower()
    key = low if low in _ALIASES else low.replace("-", "_")
    return SOLVERS.get(_ALIASES.get(key, key))


def get_solver(name: str) -> Solver:
    """The solver called `name` (or an alias of it); a clear error for unknown names."""
    solver = find_solver(name)
    if solver is None:
        raise AmedError(f"unknown solver {name!r}; choose one of {', '.join(solver_names(aliases=True))}")
    return solver


def canonical_solver(name: str) -> str:
    """Resolve aliases; raise a clear error for unknown solver names."""
    return get_solver(name).name


def display_name(name: str) -> str:
    """How tables and plots name a solver; a name no solver answers to (a results file written by
    another version) is shown as it is."""
    solver = find_solver(name)
    return name if solver is None else solver.display_name


def solver_names(*, uses_predictor: bool | None = None, aliases: bool = False) -> list[str]:
    """Canonical names in table order (then, with `aliases`, the aliases), optionally only the solvers
    that do (True) or do not (False) need a predictor."""
    chosen = [s for s in SOLVERS.values() if uses_predictor is None or s.uses_predictor == uses_predictor]
    return [s.name for s in chosen] + ([a for s in chosen for a in s.aliases] if aliases else [])


def nfe_for(solver: str, num_points: int, afs: bool = False, ends_at_zero: bool = False) -> int:
    """Exact number of network evaluations for N = num_points time points.

    AFS removes the first evaluation; a final interval ending at t = 0 costs one evaluation."""
    spec = get_solver(solver)
    n = spec.evals_per_interval * (num_points - 1) - int(afs)
    if ends_at_zero:
        n -= spec.evals_saved_at_zero
    return n


def evaluations_for(solver: str, num_points: int, afs: bool = False, ends_at_zero: bool = False) -> int:
    """Network evaluations per sample (forward passes), counting each of a parallel call's K points:
    equal to `nfe_for` except for EPD, where it is (K + 1)(N - 1) - [AFS] (3N - 4 for K = 2)."""
    spec = get_solver(solver)
    extra = (spec.parallel_points - 1) * (num_points - 1 - int(ends_at_zero))
    return nfe_for(solver, num_points, afs, ends_at_zero) + extra


def points_for_nfe(solver: str, nfe: int, afs: bool) -> int:
    """The number of time points N that spends exactly `nfe` evaluations, or a clear error."""
    spec = get_solver(solver)
    per = spec.evals_per_interval
    intervals, rest = divmod(nfe + int(afs), per)
    if nfe < 1 or rest or intervals < 1:
        if per == 2:
            parity = "odd" if afs else "even"
            hint = (
                f"{spec.name} costs 2 evaluations per interval{' minus 1 with AFS' if afs else ''}, "
                f"so NFE must be {parity} and at least {1 if afs else 2}"
            )
            other = "without" if afs else "with"
            raise AmedError(f"NFE {nfe} is impossible for {spec.name}: {hint} (or try {other} AFS)")
        raise AmedError(f"NFE {nfe} is impossible for {spec.name}: need at least {1 + int(afs)}")
    return intervals + 1


@dataclass(frozen=True)
class SolverConfig:
    """Which solver, whether the first interval uses the analytical first step (AFS), and the options of
    its reference, named as there: `max_order` (multistep solvers), `predict_x0`, `lower_order_final`,
    `thresholding` (DPM-Solver++ and its plugin). None means the reference's default; an option the
    solver does not take is refused, so nothing given is silently ignored."""

    name: str
    afs: bool = False
    max_order: int | None = None
    predict_x0: bool | None = None
    lower_order_final: bool | None = None
    thresholding: bool | None = None

    def __post_init__(self) -> None:
        spec = get_solver(self.name)
        object.__setattr__(self, "name", spec.name)
        for option in OPTION_NAMES:
            value = getattr(self, option)
            if option not in spec.options:
                if value is not None:
                    takers = ", ".join(s.name for s in SOLVERS.values() if option in s.options)
                    raise AmedError(f"{spec.name} takes no {option} option (it applies to {takers})")
            elif value is None:
                default = spec.options[option]
                object.__setattr__(self, option, self.predict_x0 if default is None else default)
        top = spec.options.get("max_order")
        if top is not None and (type(self.max_order) is not int or not 1 <= self.max_order <= top):
            raise AmedError(f"{spec.name}'s max_order must be an integer 1..{top}, got {self.max_order!r}")
        if self.thresholding and not self.predict_x0:
            raise AmedError(f"{spec.name}: thresholding applies to data prediction (predict_x0), not noise prediction")

    @property
    def spec(self) -> Solver:
        return SOLVERS[self.name]

    @property
    def uses_predictor(self) -> bool:
        return self.spec.uses_predictor

    def options(self) -> dict[str, object]:
        """The options this solver takes, with their values (the reference's defaults filled in)."""
        return {option: getattr(self, option) for option in OPTION_NAMES if option in self.spec.options}
