"""ODE solvers for diffusion sampling: schedules, one implementation of every step formula, and a
high-accuracy reference solution for measuring error."""

from .model import Evaluation, Model
from .schedules import SCHEDULES, make_schedule, nested_schedule
from .steps import (
    EVALS_PER_INTERVAL,
    PREDICTOR_SOLVERS,
    SolverConfig,
    SolverState,
    canonical_solver,
    nfe_for,
    points_for_nfe,
    sample,
    step,
)

__all__ = [
    "EVALS_PER_INTERVAL",
    "PREDICTOR_SOLVERS",
    "SCHEDULES",
    "Evaluation",
    "Model",
    "SolverConfig",
    "SolverState",
    "canonical_solver",
    "make_schedule",
    "nested_schedule",
    "nfe_for",
    "points_for_nfe",
    "sample",
    "step",
]
