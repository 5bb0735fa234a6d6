"""What every solver needs from a network: one call that returns the denoised image and, for AMED
graphs, the predictor's (r, c, a); for EPD, one call that denoises K points per sample at once and the
learned table's row of an interval. The PyTorch reference, distillation and every deployed executor
implement this one interface, so the solver formulas exist exactly once (`steps.py`, `formulas.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from torch import Tensor

if TYPE_CHECKING:
    from ..epd_table import EPDRow


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

    def denoise_points(self, x: Tensor, sigma: Tensor) -> Tensor:
        """EPD: D(x, sigma) for K points per sample in one call. x [B*K,C,H,W] and sigma [B*K] are
        sample-major; the model repeats each sample's conditioning K times to match."""
        ...

    def epd_row(self, n: int) -> EPDRow:
        """EPD: the learned (r, weight, c, a) of interval n, each a [K] tensor on the model's device."""
        ...
