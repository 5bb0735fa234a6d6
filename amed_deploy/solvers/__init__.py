"""ODE solvers for diffusion sampling: schedules, one registry entry and one implementation of every
step formula, and a high-accuracy reference solution for measuring error."""

from .model import Evaluation, Model
from .registry import (
    SOLVERS,
    Solver,
    SolverConfig,
    canonical_solver,
    display_name,
    evaluations_for,
    find_solver,
    get_solver,
    nfe_for,
    points_for_nfe,
    solver_names,
)
from .schedules import SCHEDULES, make_schedule, nested_schedule, split_intervals
from .steps import Interval, SolverState, sample, step

__all__ = [
    "SCHEDULES",
    "SOLVERS",
    "Evaluation",
    "Interval",
    "Model",
    "Solver",
    "SolverConfig",
    "SolverState",
    "canonical_solver",
    "display_name",
    "evaluations_for",
    "find_solver",
    "get_solver",
    "make_schedule",
    "nested_schedule",
    "nfe_for",
    "points_for_nfe",
    "sample",
    "solver_names",
    "split_intervals",
    "step",
]
