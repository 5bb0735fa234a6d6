"""Sample quality of one sampler: FID against the training set, and RMSE of its end point against a
high-accuracy solution of the same ODE from the same noise (a yardstick shared by every solver)."""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..amed_network import AMEDNetwork, TorchModel
from ..config import SamplerConfig
from ..data import from_model_space
from ..datasets import resolve
from ..errors import AmedError
from ..networks import image_shape
from ..sampling import reference_sample
from ..solvers import SolverConfig, make_schedule, sample
from ..solvers.reference import reference_solution
from .inputs import batch_classes, batch_inputs, batch_slices

REFERENCE_POINTS = 256  # time points of the RMSE yardstick (Heun, polynomial rho = 7): 510 NFE


@torch.no_grad()
def sample_many(
    network: AMEDNetwork,
    sampler_cfg: SamplerConfig,
    n: int,
    batch: int,
    seed0: int = 0,
    device: torch.device | str = "cpu",
    classes: str | int | None = "uniform",
    progress: bool = False,
) -> tuple[Tensor, np.ndarray | None]:
    """n images as uint8 [N,C,H,W] (quantised like a saved PNG) and their class indices [N] (None when
    unconditional). Sample i uses seed seed0 + i, whatever the batch; `classes`: 'uniform' (cycle), 'random',
    or one class."""
    net = network.net
    images = torch.empty((n, *image_shape(net)), dtype=torch.uint8)
    labels = np.empty(n, dtype=np.int64) if network.label_dim else None
    desc = f"sample {sampler_cfg.solver} NFE {sampler_cfg.nfe}"
    for start, size in tqdm(batch_slices(n, batch), desc=desc, unit="batch", disable=not progress):
        cls = batch_classes(network.label_dim, start, size, classes)
        x, onehot = reference_sample(network, sampler_cfg, seed0 + start, size, cls, device)
        images[start : start + size] = from_model_space(x)
        if labels is not None:
            labels[start : start + size] = onehot.argmax(dim=1).numpy()
    return images, labels


def fid_of(
    network: AMEDNetwork,
    cfg: SamplerConfig,
    n: int,
    stats: tuple[np.ndarray, np.ndarray],
    inception,
    batch: int = 500,
    seed0: int = 0,
    device: torch.device | str = "cpu",
    resize: str = "tf",
    progress: bool = False,
    fd_method: str = "sqrtm",
) -> float:
    """FID of n samples of one sampler against precomputed (mu, sigma) of the reference images."""
    from ..fid import feature_stats, frechet_distance, inception_features

    images, _ = sample_many(network, cfg, n, batch, seed0, device, progress=progress)
    feats = inception_features(images, inception, batch, device, resize)
    return frechet_distance(*feature_stats(feats), *stats, method=fd_method)


def prepare_fid(
    data: str | os.PathLike,
    inception_path: str | os.PathLike,
    image_shape: tuple[int, int, int],
    device: torch.device | str = "cpu",
    stats_cache: str | os.PathLike | None = None,
    batch: int = 500,
    resize: str = "tf",
    input_scale: str = "auto",
    progress: bool = True,
    dataset: str = "auto",
) -> tuple[object, tuple[np.ndarray, np.ndarray], dict]:
    """(Inception, training-set (mu, sigma), protocol record): the training images of the dataset at
    `data` (`dataset`: its name, or auto to tell from the path) in the model's geometry, their
    statistics cached in `stats_cache` when given."""
    from ..fid import dataset_stats_cached, feature_stats, inception_features, load_inception

    ds = resolve(data, dataset)
    if tuple(image_shape) != ds.image_shape:
        shape, needs = "x".join(map(str, image_shape)), "x".join(map(str, ds.image_shape))
        raise AmedError(
            f"the model makes {shape} images; {ds.title} FID needs {needs} (give the model's own dataset as --data)"
        )
    inception = load_inception(inception_path, device, input_scale)
    raw, _ = ds.load(data, "train")
    images = torch.from_numpy(raw)
    bar = tqdm(total=len(images), desc="inception (training set)", unit="img", disable=not progress)
    try:
        if stats_cache is None:
            feats = inception_features(images, inception, batch, device, resize, progress=bar.update)
            stats = feature_stats(feats)
        else:
            stats = dataset_stats_cached(images, inception, stats_cache, batch, device, resize, progress=bar.update)
    finally:
        bar.close()
    info = {
        "inception": str(inception_path),
        "inception_sha256": inception.sha256,
        "inception_call": "return_features=True" if inception.return_features else "forward(x)",
        "input_scale": "0..255" if inception.input_scale == "uint8" else "(pixel - 128) / 128",
        "resize": resize,
        "reference_images": ds.describe(data, "train", len(images)),
    }
    return inception, stats, info


class ReferenceCache:
    """High-accuracy end points of the sampling ODE per seed batch, computed once and shared by every
    solver compared against them (so all cells see the same yardstick). One cache per checkpoint.

    method 'heun': Heun on the polynomial rho=7 schedule with `points` time points (2(points-1) NFE;
    its error shrinks as 1/points^2, so 256 points sit far below any few-step solver's error).
    method 'adaptive': scipy DOP853 to rtol/atol (exact to tolerance; only practical for tiny nets)."""

    def __init__(self, method: str = "heun", points: int = REFERENCE_POINTS, rtol: float = 1e-6, atol: float = 1e-6):
        if method not in ("heun", "adaptive"):
            raise AmedError(f"reference must be heun or adaptive, got {method!r}")
        if method == "heun" and points < 2:
            raise AmedError(f"the reference needs at least 2 time points, got {points}")
        self.method, self.points, self.rtol, self.atol = method, points, rtol, atol
        self._store: dict[tuple, Tensor] = {}

    def describe(self) -> dict:
        if self.method == "heun":
            return {"method": "heun", "schedule": "polynomial", "rho": 7.0, "points": self.points}
        return {"method": "adaptive", "integrator": "DOP853", "rtol": self.rtol, "atol": self.atol}

    @torch.no_grad()
    def get(
        self,
        network: AMEDNetwork,
        x0: Tensor,
        labels: Tensor | None,
        key: tuple,
        sigma_min: float,
        sigma_max: float,
    ) -> Tensor:
        """The reference end point for x0 (already scaled by sigma_max); `key` names the seed batch."""
        full = (*key, sigma_min, sigma_max)
        if full not in self._store:
            if self.method == "heun":
                t_steps = make_schedule("polynomial", self.points, sigma_min, sigma_max)
                model = TorchModel(AMEDNetwork(network.net), labels)  # the yardstick needs no predictor
                x, _ = sample(model, x0, t_steps, SolverConfig("heun"))
            else:

                def denoise(x: Tensor, sigma: Tensor) -> Tensor:
                    return network.net(x, sigma, labels)

                x = reference_solution(denoise, x0, sigma_max, sigma_min, rtol=self.rtol, atol=self.atol)
            self._store[full] = x.detach().cpu()
        return self._store[full].to(x0.device)


@torch.no_grad()
def rmse_to_reference(
    network: AMEDNetwork,
    cfgs: dict[str, SamplerConfig],
    n: int,
    batch: int,
    seed0: int = 0,
    device: torch.device | str = "cpu",
    reference: str = "heun",
    reference_points: int = REFERENCE_POINTS,
    cache: ReferenceCache | None = None,
    networks: dict[str, AMEDNetwork] | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """RMSE (over all pixels, model space [-1, 1]) of each sampler's final x against the reference
    solution from the SAME noise and labels. `networks` gives a cell its own network (an AMED
    predictor); pass one `cache` across calls to compare every cell with the same reference."""
    cache = cache or ReferenceCache(reference, reference_points)
    networks = networks or {}
    sums = dict.fromkeys(cfgs, 0.0)
    count = 0
    for start, size in tqdm(batch_slices(n, batch), desc="rmse", unit="batch", disable=not progress):
        noise, labels = batch_inputs(network, seed0, start, size, "uniform", device)
        for name, cfg in cfgs.items():
            x0 = noise * cfg.t_steps[0]
            target = cache.get(network, x0, labels, (seed0 + start, size), cfg.t_steps[-1], cfg.t_steps[0])
            x, _ = sample(TorchModel(networks.get(name, network), labels), x0, cfg.t_steps, cfg.solver_config)
            sums[name] += (x.double() - target.double()).square().sum().item()
        count += noise.numel()
    return {name: math.sqrt(total / count) for name, total in sums.items()}
