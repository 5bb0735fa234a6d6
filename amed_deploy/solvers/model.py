"""What every solver needs from a network: one call that returns the denoised image and, for AMED
graphs, the predictor's (r, c, a). The PyTorch reference, distillation and every deployed executor
implement this one interface, so the solver formulas exist exactly once (`steps.py`, `formulas.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor


@dataclass
class Evaluation:
    """One network evaluation at (x, sigma).

    `denoised` is D(x, sigma). r, c, a are the AMED predictor's outputs (shape [B,1,1,1]) computed from
    the U-Net feature of this same call and the step (sigma -> sigma_next); None for a plain denoiser.
    Executors may reuse output buffers: values are valid until the model's next call.
    """

    denoised: Tensor
    r: Tensor | None = None
    c: Tensor | None = None
    a: Tensor | None = None


class Model(Protocol):
    """A denoiser the solvers can drive. sigma and sigma_next are per-sample tensors of shape [B]."""

    def __call__(self, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> Evaluation: ...

    def predict_without_feature(self, sigma: Tensor, sigma_next: Tensor) -> Evaluation:
        """The predictor's (r, c, a) on a zero feature: the AMED step after an analytical first step,
        where no network call (so no feature) exists. `denoised` is unused and may be empty."""
        ...
