"""EPD-Solver's learned parameters: a per-interval table, not a network (EPD-Solver, Zhu et al., ICCV
2025, BeierZhu/EPD branch EPD-Solver, training/networks.py EPD_predictor). Each interval n has K
intermediate points; point k has its place r_k in (0, 1) of the interval in log time, its weight
lambda_k (a softmax over k, so the weights lie on the simplex), its direction scale c_k and its time
scale a_k (both 1 +- scale, reached through a sigmoid of half the raw value, as the reference does).

The values do not depend on the input, so a deployed graph carries them as constants in its metadata
(`EPDParams.values`) and no head runs at sampling time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .errors import AmedError

POINTS = 2  # K: every released EPD checkpoint, and the reference's default
PARAMETERS = ("r", "weight", "c", "a")  # one row per interval, one column per point, in this order
MAX_SCALE = 1.0  # scales are 1 +- scale_*; at 1 a time or direction could reach 0
WEIGHT_SUM_TOLERANCE = 1e-5


@dataclass(frozen=True)
class EPDConfig:
    """K and the ranges of the two scales (the reference's scale_dir and scale_time; 0 = off)."""

    points: int = POINTS
    scale_dir: float = 0.05
    scale_time: float = 0.05

    def __post_init__(self) -> None:
        if type(self.points) is not int or not 1 <= self.points <= 16:
            raise AmedError(f"EPD points (K) must be an integer 1..16, got {self.points!r}")
        for name in ("scale_dir", "scale_time"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < MAX_SCALE:
                raise AmedError(f"EPD {name} must be a number in [0, 1), got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EPDRow:
    """One interval's parameters, each a [K] tensor."""

    r: Tensor
    weight: Tensor
    c: Tensor
    a: Tensor


@dataclass(frozen=True)
class EPDParams:
    """The whole table after its transforms: each field [intervals, K]. Built from the trainable
    `EPDTable` (with gradients) or from a graph's recorded constants (`from_values`)."""

    r: Tensor
    weight: Tensor
    c: Tensor
    a: Tensor

    @property
    def intervals(self) -> int:
        return self.r.shape[0]

    def row(self, n: int) -> EPDRow:
        return EPDRow(self.r[n], self.weight[n], self.c[n], self.a[n])

    def values(self) -> list[list[list[float]]]:
        """[interval][point] -> [r, weight, c, a] as plain floats (what metadata records)."""
        table = torch.stack([self.r, self.weight, self.c, self.a], dim=-1).detach().double().cpu()
        return table.tolist()

    @classmethod
    def from_values(cls, values: Sequence, device: torch.device | str = "cpu") -> EPDParams:
        """The constants of a recorded table, checked: r in (0, 1), weights positive summing to 1,
        scales positive and finite (a damaged record would otherwise sample garbage silently)."""
        table = check_values(values)
        t = torch.tensor(table, dtype=torch.float32, device=device)
        return cls(*(t[..., i] for i in range(len(PARAMETERS))))


def check_values(values: object) -> list[list[list[float]]]:
    """A recorded table as nested float lists [intervals][K][4], or a clear error."""
    if not isinstance(values, (list, tuple)) or not values:
        raise AmedError("EPD table must be a non-empty list of intervals")
    rows: list[list[list[float]]] = []
    points = None
    for n, row in enumerate(values):
        if not isinstance(row, (list, tuple)) or not row or (points is not None and len(row) != points):
            raise AmedError(f"EPD table interval {n} must list the same number (K >= 1) of points")
        points = len(row)
        out = []
        for k, entry in enumerate(row):
            if not isinstance(entry, (list, tuple)) or len(entry) != len(PARAMETERS):
                raise AmedError(f"EPD table interval {n} point {k} must be [r, weight, c, a]")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in entry):
                raise AmedError(f"EPD table interval {n} point {k} holds a non-finite or non-numeric value")
            r, weight, c, a = (float(v) for v in entry)
            if not 0 < r < 1 or not 0 < weight <= 1 or not 0 < c < 1 + MAX_SCALE or not 0 < a < 1 + MAX_SCALE:
                raise AmedError(
                    f"EPD table interval {n} point {k} is out of range: need 0 < r < 1, 0 < weight <= 1 and "
                    f"0 < c, a < 2, got {[r, weight, c, a]}"
                )
            out.append([r, weight, c, a])
        if abs(sum(p[1] for p in out) - 1) > WEIGHT_SUM_TOLERANCE:
            raise AmedError(f"EPD table interval {n}: the point weights must sum to 1")
        rows.append(out)
    return rows


def _scaled(raw: Tensor, scale: float) -> Tensor:
    """1 - s + 2 s sigmoid(raw / 2): the reference's c and a transform (slope 1/2)."""
    return 1 - scale + 2 * scale * torch.sigmoid(raw / 2)


class EPDTable(nn.Module):
    """The trainable table: four raw [intervals, K] parameters initialised i.i.d. N(0, 1), as the
    reference does; `params()` applies sigmoid (r), softmax over k (weights) and the scale maps.
    A scale of 0 fixes that parameter at 1 and its raw values are unused."""

    def __init__(self, intervals: int, config: EPDConfig = EPDConfig()):
        super().__init__()
        if type(intervals) is not int or intervals < 1:
            raise AmedError(f"an EPD table needs at least one interval, got {intervals!r}")
        self.config = config
        shape = (intervals, config.points)
        self.r_raw = nn.Parameter(torch.randn(shape))
        self.weight_raw = nn.Parameter(torch.randn(shape))
        self.c_raw = nn.Parameter(torch.randn(shape))
        self.a_raw = nn.Parameter(torch.randn(shape))

    @property
    def intervals(self) -> int:
        return self.r_raw.shape[0]

    def params(self) -> EPDParams:
        cfg = self.config
        one = torch.ones_like(self.r_raw)
        c = _scaled(self.c_raw, cfg.scale_dir) if cfg.scale_dir > 0 else one
        a = _scaled(self.a_raw, cfg.scale_time) if cfg.scale_time > 0 else one
        return EPDParams(torch.sigmoid(self.r_raw), torch.softmax(self.weight_raw, dim=1), c, a)

    def row(self, n: int) -> EPDRow:
        return self.params().row(n)


def parameter_count(table: EPDTable) -> int:
    """Stored parameters: 4 K (N - 1)."""
    return sum(p.numel() for p in table.parameters())
