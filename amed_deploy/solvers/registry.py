"""Every solver the package knows, one entry each; NFE accounting, name lookup, the CLI's choices and the
evaluation tables all derive from these entries. Adding a solver is one step function in `steps.py`
and one entry here.

AMED students put one learned intermediate evaluation inside each interval: "amed" is the AMED-Solver
(a DPM-Solver-2 whose intermediate time, direction scale c and time scale a are predicted),
"amed_euler"/"amed_ipndm" are the AMED-Plugin on those solvers, and the plugin on DPM-Solver-2 is the
AMED-Solver itself (alias "amed_dpm2").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
    evals_per_interval: int
    uses_predictor: bool = False  # an AMED student: needs a distilled g_phi
    multistep: bool = False  # carries history in SolverState from one interval to the next
    aliases: tuple[str, ...] = ()
    evals_saved_at_zero: int = 0  # evaluations a final interval ending at t = 0 skips
    step: StepFunction


def _table(*solvers: Solver) -> Mapping[str, Solver]:
    """The entries by canonical name, in table order; refuses a name or alias given twice."""
    seen: set[str] = set()
    for solver in solvers:
        for key in (solver.name, *solver.aliases):
            if key in seen:
                raise ValueError(f"solver name {key!r} is registered twice")
            seen.add(key)
    return MappingProxyType({solver.name: solver for solver in solvers})


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
        evals_saved_at_zero=1,
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
        reference="diff-sampler diff-solvers-main/solvers.py dpm_2_sampler (r = 0.5)",
        evals_per_interval=2,
        aliases=("dpm-solver-2",),
        step=steps.dpm2,
    ),
    Solver(
        name="ipndm",
        display_name="iPNDM",
        reference="diff-sampler diff-solvers-main/solvers.py ipndm_sampler",
        evals_per_interval=1,
        multistep=True,
        step=steps.ipndm,
    ),
    Solver(
        name="dpmpp2m",
        display_name="DPM-Solver++(2M)",
        reference="dpm-solver dpm_solver_pytorch.py multistep_dpm_solver_second_update (lower_order_final)",
        evals_per_interval=1,
        multistep=True,
        step=steps.dpmpp2m,
    ),
    Solver(
        name="dpmpp3m",
        display_name="DPM-Solver++(3M)",
        reference=(
            "dpm-solver dpm_solver_pytorch.py multistep_dpm_solver_third_update (lower_order_final), "
            "second-difference weight doubled (docs/DESIGN.md)"
        ),
        evals_per_interval=1,
        multistep=True,
        aliases=("dpm-solver++3m",),
        step=steps.dpmpp3m,
    ),
    Solver(
        name="amed",
        display_name="AMED-Solver",
        reference="diff-sampler amed-solver-main/solvers_amed.py amed_sampler",
        evals_per_interval=2,
        uses_predictor=True,
        aliases=("amed_dpm2",),
        step=steps.amed,
    ),
    Solver(
        name="amed_euler",
        display_name="AMED-Plugin (Euler)",
        reference="diff-sampler amed-solver-main/solvers_amed.py euler_sampler",
        evals_per_interval=2,
        uses_predictor=True,
        step=steps.amed_euler,
    ),
    Solver(
        name="amed_ipndm",
        display_name="AMED-Plugin (iPNDM)",
        reference="diff-sampler amed-solver-main/solvers_amed.py ipndm_sampler, weights of the uneven grid",
        evals_per_interval=2,
        uses_predictor=True,
        multistep=True,
        step=steps.amed_ipndm,
    ),
)
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

    AFS removes the first evaluation; Heun skips its correction on a final interval ending at t = 0."""
    spec = get_solver(solver)
    n = spec.evals_per_interval * (num_points - 1) - int(afs)
    if ends_at_zero:
        n -= spec.evals_saved_at_zero
    return n


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
    def spec(self) -> Solver:
        return SOLVERS[self.name]

    @property
    def uses_predictor(self) -> bool:
        return self.spec.uses_predictor
