"""PCA of accurate sampling trajectories: the low-dimensional-trajectory hypothesis AMED rests on."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..amed_network import AMEDNetwork, TorchModel
from ..config import sigma_range
from ..solvers import SolverConfig, make_schedule, sample
from .inputs import batch_inputs, batch_slices


@dataclass
class TrajectoryPCA:
    """Per-trajectory PCA of [n_points, D] state matrices (centred over time)."""

    ratios: np.ndarray  # [n_traj, k]: fraction of variance of each of the top k components
    n_points: int
    t_steps: list[float] = field(default_factory=list)

    @property
    def cumulative(self) -> np.ndarray:
        """[n_traj, k]: fraction explained by the top 1, 2, ..., k components."""
        return np.cumsum(self.ratios, axis=1)

    @property
    def mean_top(self) -> dict[int, float]:
        """Mean fraction of variance explained by the top 1, 2 and 3 components."""
        cum = self.cumulative.mean(axis=0)
        return {k: float(cum[k - 1]) for k in (1, 2, 3) if k <= len(cum)}

    def to_dict(self) -> dict:
        return {
            "n_traj": int(self.ratios.shape[0]),
            "n_points": self.n_points,
            "mean_top": {str(k): v for k, v in self.mean_top.items()},
            "mean_ratio": self.ratios.mean(axis=0).tolist(),
            "min_top": {str(k): float(self.cumulative[:, k - 1].min()) for k in self.mean_top},
            "per_trajectory_top": {str(k): self.cumulative[:, k - 1].tolist() for k in self.mean_top},
        }


@torch.no_grad()
def trajectory_pca(
    network: AMEDNetwork,
    n_traj: int,
    n_points: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch: int = 64,
    top_k: int = 10,
    progress: bool = False,
    scaled: bool = False,
) -> TrajectoryPCA:
    """PCA of accurate sampling trajectories (Heun, polynomial, n_points time points, every x_n kept).

    Each trajectory's states form an [n_points, D] matrix; centred over time, its singular values
    give the variance explained per component. If trajectories lie near a low-dimensional subspace
    (AMED's premise), the top 1-2 components explain almost all of it. Raw states are dominated by
    the shrinking noise (x ~ t z at large t); `scaled` divides each x_n by sqrt(1 + t_n^2), which puts
    every state on a comparable scale and so tests the shape of the path, not its length."""
    lo, hi = sigma_range(network.net)
    t_steps = make_schedule("polynomial", n_points, lo, hi)
    k = min(top_k, n_points)
    ratios = []
    plain = AMEDNetwork(network.net)
    scale = [1 / math.sqrt(1 + t * t) if scaled else 1.0 for t in t_steps]
    slices = batch_slices(n_traj, batch)
    for start, size in tqdm(slices, desc="pca", unit="batch", disable=not progress):
        noise, labels = batch_inputs(network, seed, start, size, "uniform", device)
        x0 = noise * t_steps[0]
        states = [scale[0] * x0.flatten(1).double().cpu()]
        sample(
            TorchModel(plain, labels),
            x0,
            t_steps,
            SolverConfig("heun"),
            on_interval=lambda n, x, states=states: states.append(scale[n + 1] * x.flatten(1).double().cpu()),
        )
        traj = torch.stack(states, dim=1)  # [B, n_points, D]
        centred = traj - traj.mean(dim=1, keepdim=True)
        s2 = torch.linalg.svdvals(centred).square()  # [B, min(n_points, D)]
        total = s2.sum(dim=1, keepdim=True).clamp_min(1e-300)
        r = (s2 / total)[:, :k]
        if r.shape[1] < k:
            r = torch.nn.functional.pad(r, (0, k - r.shape[1]))
        ratios.append(r.numpy())
    return TrajectoryPCA(np.concatenate(ratios), n_points, list(t_steps))
