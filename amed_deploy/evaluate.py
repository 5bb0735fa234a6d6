"""Quality of the samplers: FID against the training set, RMSE of each solver's end point against a
high-accuracy solution of the same ODE from the same noise, and PCA of accurate trajectories (the
low-dimensional-trajectory hypothesis AMED rests on). Also the results table and plots.

Seeds: batch i of a run uses seed seed0 + i (noise drawn on the CPU by `noise.make_inputs`, so every
device sees the same inputs) and class labels cycle 0, 1, ..., L-1 over the sample index, so every
class is equally represented. FID and RMSE of a cell use the same seeds.

Baseline cells (training-free solvers) use the polynomial (EDM, rho = 7) schedule without AFS, except
that a solver costing 2 evaluations per interval (Heun, DPM-Solver-2, midpoint) can only spend an even
NFE; at an odd NFE it gets the analytical first step (AFS), which saves one evaluation:
NFE = 2(N - 1) - 1. AMED cells use the configuration their predictor was distilled for.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .amed_network import AMEDNetwork, TorchModel
from .config import SamplerConfig, sigma_range
from .data import from_model_space
from .errors import AmedError
from .files import atomic_write_bytes
from .noise import make_inputs
from .sampling import baseline_sampler, reference_sample
from .solvers import EVALS_PER_INTERVAL, SolverConfig, canonical_solver, make_schedule, nfe_for, sample
from .solvers.reference import reference_solution

REFERENCE_POINTS = 256  # time points of the RMSE yardstick (Heun, polynomial rho = 7): 510 NFE
SOLVER_NAMES = {
    "euler": "Euler (DDIM)",
    "heun": "EDM Heun",
    "midpoint": "Midpoint",
    "dpm2": "DPM-Solver-2",
    "ipndm": "iPNDM",
    "dpmpp2m": "DPM-Solver++(2M)",
    "dpmpp3m": "DPM-Solver++(3M)",
    "amed": "AMED-Solver",
    "amed_euler": "AMED-Plugin (Euler)",
    "amed_ipndm": "AMED-Plugin (iPNDM)",
}


# ----------------------------------------------------------------------------------------------- inputs


def _batches(n: int, batch: int) -> list[tuple[int, int]]:
    if n < 1 or batch < 1:
        raise AmedError(f"need n >= 1 and batch >= 1, got n={n}, batch={batch}")
    return [(start, min(batch, n - start)) for start in range(0, n, batch)]


def _classes(label_dim: int, start: int, size: int, classes: str | int | None) -> int | list[int] | None:
    """Labels of samples start..start+size: 'uniform' cycles 0..L-1 over the global index."""
    if label_dim == 0:
        return None
    if classes == "uniform":
        return [(start + k) % label_dim for k in range(size)]
    if classes in (None, "random"):
        return None
    return int(classes)


def _inputs(network: AMEDNetwork, seed: int, start: int, size: int, classes, device) -> tuple[Tensor, Tensor | None]:
    """Unit noise and one-hot labels of one batch, exactly as `reference_sample` draws them."""
    net = network.net
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    noise, labels = make_inputs(seed, size, shape, network.label_dim, _classes(network.label_dim, start, size, classes))
    return noise.to(device), None if labels is None else labels.to(device)


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
    unconditional). Batch i uses seed seed0 + i; `classes`: 'uniform' (cycle), 'random', or one class."""
    net = network.net
    images = torch.empty((n, net.img_channels, net.img_resolution, net.img_resolution), dtype=torch.uint8)
    labels = np.empty(n, dtype=np.int64) if network.label_dim else None
    desc = f"sample {sampler_cfg.solver} NFE {sampler_cfg.nfe}"
    for i, (start, size) in enumerate(tqdm(_batches(n, batch), desc=desc, unit="batch", disable=not progress)):
        cls = _classes(network.label_dim, start, size, classes)
        x, onehot = reference_sample(network, sampler_cfg, seed0 + i, size, cls, device)
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
    from .fid import feature_stats, frechet_distance, inception_features

    images, _ = sample_many(network, cfg, n, batch, seed0, device, progress=progress)
    feats = inception_features(images, inception, batch, device, resize)
    return frechet_distance(*feature_stats(feats), *stats, method=fd_method)


# ------------------------------------------------------------------------------------------------- RMSE


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
    for i, (start, size) in enumerate(tqdm(_batches(n, batch), desc="rmse", unit="batch", disable=not progress)):
        noise, labels = _inputs(network, seed0 + i, start, size, "uniform", device)
        for name, cfg in cfgs.items():
            x0 = noise * cfg.t_steps[0]
            target = cache.get(network, x0, labels, (seed0 + i, start, size), cfg.t_steps[-1], cfg.t_steps[0])
            x, _ = sample(TorchModel(networks.get(name, network), labels), x0, cfg.t_steps, cfg.solver_config)
            sums[name] += (x.double() - target.double()).square().sum().item()
        count += noise.numel()
    return {name: math.sqrt(total / count) for name, total in sums.items()}


# -------------------------------------------------------------------------------------------------- PCA


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
    for i, (start, size) in enumerate(tqdm(_batches(n_traj, batch), desc="pca", unit="batch", disable=not progress)):
        noise, labels = _inputs(network, seed + i, start, size, "uniform", device)
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


# ------------------------------------------------------------------------------------------------ cells


def edm_reference_sampler(net: torch.nn.Module, num_points: int = 18) -> SamplerConfig:
    """EDM's own sampler, the quality reference row: Heun on 18 polynomial points plus a last Euler
    step from sigma_min to 0 (Heun skips its correction there): 2 * 18 - 1 = 35 NFE."""
    lo, hi = sigma_range(net)
    steps = (*make_schedule("polynomial", num_points, lo, hi), 0.0)
    nfe = nfe_for("heun", len(steps), ends_at_zero=True)
    return SamplerConfig("heun", nfe, len(steps), "polynomial", lo, hi, False, 7.0, 4, steps)


def baseline_afs(solver: str, nfe: int) -> bool:
    """AFS for a training-free solver at this NFE: only where it is what makes the NFE reachable,
    i.e. a 2-evaluations-per-interval solver (Heun, DPM-Solver-2) at an odd NFE."""
    return EVALS_PER_INTERVAL[canonical_solver(solver)] == 2 and nfe % 2 == 1


def find_predictors(
    templates: Iterable[str], nfes: Iterable[int], folder: str | os.PathLike | None = None
) -> dict[tuple[str, int], Path]:
    """(solver, nfe) -> predictor file, from name templates with '{nfe}' (relative to `folder`).

    Files that do not exist are left out; the solver is the one recorded in each file."""
    from .predictor_file import load_predictor

    found: dict[tuple[str, int], Path] = {}
    for template in templates:
        if "{nfe}" not in template:
            raise AmedError(f"predictor template {template!r} has no '{{nfe}}' placeholder")
        for nfe in nfes:
            path = Path(template.format(nfe=nfe))
            if folder is not None and not path.is_absolute():
                path = Path(folder) / path
            if path.is_file():
                found[(load_predictor(path).sampler.solver, nfe)] = path
    return found


@dataclass
class Cell:
    """One (solver, NFE) entry of the table: its sampler and network, or why it cannot run."""

    solver: str
    nfe: int
    cfg: SamplerConfig | None = None
    network: AMEDNetwork | None = None
    predictor: str | None = None
    note: str | None = None

    def record(self) -> dict:
        cfg = self.cfg
        return {
            "solver": self.solver,
            "nfe": self.nfe,
            "schedule": cfg.schedule if cfg else None,
            "afs": cfg.afs if cfg else None,
            "num_points": cfg.num_points if cfg else None,
            "predictor": self.predictor,
            "note": self.note,
        }


def plan_cells(
    network: AMEDNetwork,
    checkpoint_sha256: str | None,
    solvers: Sequence[str],
    nfes: Sequence[int],
    predictors: dict[tuple[str, int], Path],
    device: torch.device | str = "cpu",
    allow_mismatch: bool = False,
) -> list[Cell]:
    """Every (solver, NFE) cell: baselines from `baseline_sampler`, AMED cells from their predictor
    (verified against the checkpoint like `load_model`; the U-Net is shared, not reloaded)."""
    from .predictor_file import load_predictor
    from .solvers import PREDICTOR_SOLVERS

    cells = []
    for solver in solvers:
        name = canonical_solver(solver)
        for nfe in nfes:
            if name in PREDICTOR_SOLVERS:
                path = predictors.get((name, nfe))
                if path is None:
                    cells.append(Cell(name, nfe, note=f"no {name} predictor for NFE {nfe}"))
                    continue
                bundle = load_predictor(path, model_sha256=checkpoint_sha256, allow_mismatch=allow_mismatch)
                if bundle.sampler.nfe != nfe:
                    cells.append(Cell(name, nfe, note=f"{path} is for NFE {bundle.sampler.nfe}"))
                    continue
                net = AMEDNetwork(network.net, bundle.predictor.to(device), bundle.tap)
                cells.append(Cell(name, nfe, bundle.sampler, net, str(path)))
                continue
            try:
                cfg = baseline_sampler(network.net, name, nfe, "polynomial", baseline_afs(name, nfe))
            except AmedError as e:
                cells.append(Cell(name, nfe, note=str(e)))
                continue
            cells.append(Cell(name, nfe, cfg, network))
    return cells


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
) -> tuple[object, tuple[np.ndarray, np.ndarray], dict]:
    """(Inception, training-set (mu, sigma), protocol record): the Fashion-MNIST training images padded
    to 32x32 like the model's samples, their statistics cached in `stats_cache` when given."""
    from .data import load_fashion_mnist, pad_images
    from .fid import dataset_stats_cached, feature_stats, inception_features, load_inception

    if tuple(image_shape) != (1, 32, 32):
        raise AmedError(f"the model makes {'x'.join(map(str, image_shape))} images; Fashion-MNIST FID needs 1x32x32")
    inception = load_inception(inception_path, device, input_scale)
    raw, _ = load_fashion_mnist(data, "train")
    images = torch.from_numpy(pad_images(raw))
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
        "reference_images": f"Fashion-MNIST train ({len(images)}), padded to 32x32",
    }
    return inception, stats, info


def device_name(device: torch.device | str) -> str:
    """The GPU model (results name it), or the device type."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    return str(dev)


def write_json(path: str | os.PathLike, obj: dict) -> None:
    """Atomically write a JSON document."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def evaluate_cells(
    network: AMEDNetwork,
    cells: list[Cell],
    num: int,
    batch: int,
    seed: int,
    device: torch.device | str,
    stats: tuple[np.ndarray, np.ndarray] | None,
    inception=None,
    resize: str = "tf",
    rmse_num: int = 256,
    reference: ReferenceCache | None = None,
    reference_fid: bool = True,
    out: str | os.PathLike | None = None,
    header: dict | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    deadline: float | None = None,
    fd_method: str = "sqrtm",
) -> dict:
    """Fill in FID (when `stats` is given) and RMSE for every cell, plus the reference sampler's FID.

    With `out`, the results JSON is rewritten atomically after every cell, so a run cut short keeps
    what it measured; `resume` keeps cells of an earlier run with the same settings and skips them
    (and any other keys that run stored, such as a PCA record). Past `deadline` (a time.perf_counter()
    value) no new cell starts: the rest are recorded as not reached and `complete` is False."""
    start_time = time.perf_counter()
    reference = reference or ReferenceCache()
    settings = {
        "num": num,
        "seed": seed,
        "batch": batch,
        "rmse_num": rmse_num,
        "fid": stats is not None,
        "resize": resize,
        "fd_method": fd_method,
        "inception_sha256": getattr(inception, "sha256", None),
        "reference": reference.describe(),
    }
    results = {
        **(header or {}),
        "device": str(device),
        "device_name": device_name(device),
        "settings": settings,
        "rmse_reference": {**reference.describe(), "num": rmse_num},
        "cells": [],
        "reference": None,
        "reference_fid": None,
        "seconds": 0.0,
    }
    done: dict[tuple[str, int], dict] = {}
    previous_seconds = 0.0
    if resume and out is not None and Path(out).is_file():
        try:
            old = json.loads(Path(out).read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("settings") == settings:
            done = {(c["solver"], c["nfe"]): c for c in old.get("cells", []) if c.get("note") is None}
            results["reference"], results["reference_fid"] = old.get("reference"), old.get("reference_fid")
            previous_seconds = float(old.get("seconds") or 0.0)
            results.update({k: v for k, v in old.items() if k not in results and k != "complete"})
            log(f"resuming: {len(done)} cells already measured in {out}")

    def save() -> None:
        results["seconds"] = previous_seconds + time.perf_counter() - start_time
        if out is not None:
            write_json(out, results)

    for cell in cells:
        key = (cell.solver, cell.nfe)
        if key in done:
            results["cells"].append(done[key])
            continue
        rec = {**cell.record(), "fid": None, "rmse": None, "num": None, "seconds": None}
        if cell.cfg is not None and deadline is not None and time.perf_counter() > deadline:
            rec["note"] = "not reached (time budget); run again with resume"
            results["cells"].append(rec)
            continue
        if cell.cfg is not None:
            t0 = time.perf_counter()
            if stats is not None:
                rec["fid"] = fid_of(
                    cell.network, cell.cfg, num, stats, inception, batch, seed, device, resize, progress, fd_method
                )
                rec["num"] = num
            if rmse_num > 0:
                cfgs, nets = {"cell": cell.cfg}, {"cell": cell.network}
                rec["rmse"] = rmse_to_reference(
                    network, cfgs, rmse_num, batch, seed, device, cache=reference, networks=nets
                )["cell"]
            rec["seconds"] = time.perf_counter() - t0
            log(f"{cell.solver} NFE {cell.nfe}: FID {_fmt(rec['fid'], '.3f')}, RMSE {_fmt(rec['rmse'], '.4g')}")
        else:
            log(f"{cell.solver} NFE {cell.nfe}: skipped ({cell.note})")
        results["cells"].append(rec)
        save()

    out_of_time = deadline is not None and time.perf_counter() > deadline
    if reference_fid and stats is not None and results["reference_fid"] is None and not out_of_time:
        cfg = edm_reference_sampler(network.net)
        fid = fid_of(network, cfg, num, stats, inception, batch, seed, device, resize, progress, fd_method)
        points = cfg.num_points - 1  # the last time point is the final step's 0
        results["reference"] = {"solver": "heun", "nfe": cfg.nfe, "num_points": points, "fid": fid, "num": num}
        results["reference"]["note"] = "EDM's sampler: Heun on 18 polynomial points, then one Euler step to 0"
        results["reference_fid"] = fid
        log(f"reference: Heun NFE {cfg.nfe} ({points} points + final step to 0): FID {fid:.3f}")
    reached = not any("time budget" in (c.get("note") or "") for c in results["cells"])
    results["complete"] = reached and (results["reference_fid"] is not None or not reference_fid or stats is None)
    save()
    return results


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


# --------------------------------------------------------------------------------------- table & plots


def render_results_markdown(results: dict) -> str:
    """The results as a markdown table: one row per solver, one column per NFE, cells 'FID / RMSE'
    (just the one measured when a run measured only FID or only RMSE)."""
    cells = results.get("cells", [])
    has_fid = any(c.get("fid") is not None for c in cells)
    has_rmse = any(c.get("rmse") is not None for c in cells)

    def text(c: dict) -> str:
        parts = ([_fmt(c.get("fid"), ".2f")] if has_fid else []) + ([_fmt(c.get("rmse"), ".4f")] if has_rmse else [])
        return " / ".join(parts)

    solvers = list(dict.fromkeys(c["solver"] for c in cells))
    nfes = sorted({c["nfe"] for c in cells})
    by_key = {(c["solver"], c["nfe"]): c for c in cells}
    lines = [
        "| solver | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
        "|---|" + "---|" * len(nfes),
    ]
    notes = []
    for s in solvers:
        row = []
        for n in nfes:
            c = by_key.get((s, n))
            if c is None or (c.get("fid") is None and c.get("rmse") is None):
                row.append("–")
                if c is not None and c.get("note"):
                    notes.append(f"{SOLVER_NAMES.get(s, s)} NFE {n}: {c['note']}")
                continue
            mark = " ᵃ" if c.get("afs") and s not in ("amed", "amed_euler", "amed_ipndm") else ""
            row.append(f"{text(c)}{mark}")
        lines.append(f"| {SOLVER_NAMES.get(s, s)} | " + " | ".join(row) + " |")
    out = ["\n".join(lines), ""]
    ref = results.get("reference")
    if ref and ref.get("fid") is not None:
        out.append(
            f"Reference sampler: {SOLVER_NAMES.get(ref['solver'], ref['solver'])}, NFE {ref['nfe']} "
            f"({ref.get('num_points', '?')} polynomial time points, then one Euler step to 0): FID {ref['fid']:.2f}."
        )
    num = results.get("settings", {}).get("num")
    rmse = results.get("rmse_reference") or {}
    desc = []
    if has_fid:
        desc.append("FID against the training set" + (f", {num} samples per cell" if num else ""))
    if has_rmse and rmse:
        what = (
            f"Heun with {rmse.get('points')} polynomial time points"
            if rmse.get("method") == "heun"
            else "an adaptive DOP853 solve"
        )
        desc.append(
            f"RMSE (model space [-1, 1]) of the final x against {what} from the same noise, {rmse.get('num')} samples"
        )
    if desc:
        out.append("Cells: " + " / ".join(["FID"] * has_fid + ["RMSE"] * has_rmse) + ". " + "; ".join(desc) + ".")
    if any(c.get("afs") for c in cells if c["solver"] not in ("amed", "amed_euler", "amed_ipndm")):
        out.append("ᵃ odd NFE of a 2-evaluation solver: analytical first step (AFS), NFE = 2(N-1)-1.")
    if results.get("device_name"):
        out.append(f"Measured on {results['device_name']}.")
    if notes:
        out += ["", "Not measured:", *[f"- {n}" for n in notes]]
    return "\n".join(out) + "\n"


PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def line_chart(
    series: dict[str, tuple[Sequence[float], Sequence[float | None]]],
    png_path: str | os.PathLike,
    title: str,
    xlabel: str,
    ylabel: str,
    log_y: bool = False,
    hlines: dict[str, float] | None = None,
    xticks: Sequence[float] | None = None,
    backend: str = "auto",
) -> str:
    """Draw named (x, y) lines (None / non-finite points skipped) to a PNG, written atomically.

    Uses matplotlib when it is installed (it is not a dependency), else Pillow; returns which."""
    hlines = hlines or {}
    clean = {}
    for name, (xs, ys) in series.items():
        pts = [(float(x), float(y)) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
        if log_y:
            pts = [(x, y) for x, y in pts if y > 0]
        if pts:
            clean[name] = pts
    if backend == "auto":
        backend = "matplotlib" if _have_matplotlib() else "pil"
    if backend == "matplotlib":
        data = _chart_matplotlib(clean, title, xlabel, ylabel, log_y, hlines, xticks)
    elif backend == "pil":
        data = _chart_pil(clean, title, xlabel, ylabel, log_y, hlines, xticks)
    else:
        raise AmedError(f"backend must be auto, matplotlib or pil, got {backend!r}")
    atomic_write_bytes(png_path, data)
    return backend


def _chart_matplotlib(series, title, xlabel, ylabel, log_y, hlines, xticks) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=120)
    ax = fig.subplots()
    for i, (name, pts) in enumerate(series.items()):
        color = tuple(v / 255 for v in PALETTE[i % len(PALETTE)])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name, color=color)
    for name, y in hlines.items():
        ax.axhline(y, linestyle="--", color="black", linewidth=1, label=name)
    if log_y:
        ax.set_yscale("log")
    if xticks is not None:
        ax.set_xticks(list(xticks))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _chart_pil(series, title, xlabel, ylabel, log_y, hlines, xticks) -> bytes:
    from PIL import Image, ImageDraw

    width, height = 1000, 620
    left, right, top, bottom = 90, 250, 55, 70
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(16), _font(13)
    xs = [p[0] for pts in series.values() for p in pts] or [0.0, 1.0]
    ys = [p[1] for pts in series.values() for p in pts] + list(hlines.values())
    ys = [y for y in ys if y > 0] if log_y else ys
    ys = ys or [1.0]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    pad = 0.05 * (x_hi - x_lo)
    x_lo, x_hi = x_lo - pad, x_hi + pad
    if log_y:
        y_lo, y_hi = 10 ** math.floor(math.log10(min(ys))), 10 ** math.ceil(math.log10(max(ys)))
        if y_hi == y_lo:
            y_hi = y_lo * 10
        decades = range(round(math.log10(y_lo)), round(math.log10(y_hi)) + 1)
        mults = (1, 2, 5) if len(decades) <= 3 else (1,)
        yticks = [m * 10**d for d in decades for m in mults if y_lo <= m * 10**d <= y_hi]
    else:
        y_lo, y_hi = min(ys), max(ys)
        if y_hi == y_lo:
            y_lo, y_hi = y_lo - 1, y_hi + 1
        ypad = 0.05 * (y_hi - y_lo)
        yticks = _nice_ticks(y_lo - ypad, y_hi + ypad)
        y_lo, y_hi = min(yticks[0], y_lo - ypad), max(yticks[-1], y_hi + ypad)
    x0, x1, y0, y1 = left, width - right, height - bottom, top

    def px(x: float) -> float:
        return x0 + (x - x_lo) / (x_hi - x_lo) * (x1 - x0)

    def py(y: float) -> float:
        if log_y:
            f = (math.log10(y) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo))
        else:
            f = (y - y_lo) / (y_hi - y_lo)
        return y0 - f * (y0 - y1)

    for t in yticks:
        draw.line([(x0, py(t)), (x1, py(t))], fill=(225, 225, 225))
        label = f"{t:g}"
        draw.text((x0 - 8, py(t)), label, fill="black", font=small, anchor="rm")
    for t in xticks if xticks is not None else _nice_ticks(x_lo, x_hi):
        if x_lo <= t <= x_hi:
            draw.line([(px(t), y0), (px(t), y1)], fill=(235, 235, 235))
            draw.line([(px(t), y0), (px(t), y0 + 5)], fill="black")
            draw.text((px(t), y0 + 8), f"{t:g}", fill="black", font=small, anchor="mt")
    draw.rectangle([x0, y1, x1, y0], outline="black")
    legend = []
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        coords = [(px(x), py(y)) for x, y in pts]
        if len(coords) > 1:
            draw.line(coords, fill=color, width=3, joint="curve")
        for cx, cy in coords:
            draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=color)
        legend.append((name, color, False))
    for name, y in hlines.items():
        if (not log_y or y > 0) and math.isfinite(y):
            yy = py(y)
            xx = x0
            while xx < x1:
                draw.line([(xx, yy), (min(xx + 10, x1), yy)], fill="black", width=2)
                xx += 16
            legend.append((name, (0, 0, 0), True))
    ly = top + 10
    for name, color, dashed in legend:
        lx = x1 + 15
        if dashed:
            draw.line([(lx, ly + 7), (lx + 8, ly + 7)], fill=color, width=2)
            draw.line([(lx + 14, ly + 7), (lx + 22, ly + 7)], fill=color, width=2)
        else:
            draw.line([(lx, ly + 7), (lx + 22, ly + 7)], fill=color, width=3)
            draw.ellipse([lx + 7, ly + 3, lx + 15, ly + 11], fill=color)
        draw.text((lx + 30, ly), name, fill="black", font=small)
        ly += 22
    draw.text(((x0 + x1) / 2, 18), title, fill="black", font=font, anchor="mt")
    draw.text(((x0 + x1) / 2, height - 25), xlabel, fill="black", font=font, anchor="mt")
    label = Image.new("RGB", (y0 - y1, 24), "white")
    ImageDraw.Draw(label).text(((y0 - y1) / 2, 12), ylabel, fill="black", font=font, anchor="mm")
    img.paste(label.rotate(90, expand=True), (12, y1))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def plot_fid_vs_nfe(results: dict, png_path: str | os.PathLike, backend: str = "auto") -> str:
    """FID against NFE, one line per solver (log scale), the reference sampler's FID dashed."""
    cells = results.get("cells", [])
    series = {}
    for s in dict.fromkeys(c["solver"] for c in cells):
        pts = sorted((c["nfe"], c.get("fid")) for c in cells if c["solver"] == s)
        series[SOLVER_NAMES.get(s, s)] = ([p[0] for p in pts], [p[1] for p in pts])
    hlines = {}
    ref = results.get("reference")
    if ref and ref.get("fid") is not None:
        hlines[f"{SOLVER_NAMES.get(ref['solver'], ref['solver'])} NFE {ref['nfe']}"] = ref["fid"]
    nfes = sorted({c["nfe"] for c in cells})
    where = f" ({results['device_name']})" if results.get("device_name") else ""
    return line_chart(series, png_path, f"FID vs NFE{where}", "NFE", "FID", True, hlines, nfes, backend)


def plot_pca(pcas: dict[str, TrajectoryPCA | dict], png_path: str | os.PathLike, backend: str = "auto") -> str:
    """Variance left unexplained by the top k principal components (log scale), one line per PCA
    (e.g. raw and scaled states): the faster it falls, the closer trajectories are to a k-dim subspace."""
    series, n_traj, n_points = {}, 0, 0
    for name, pca in pcas.items():
        d = pca.to_dict() if isinstance(pca, TrajectoryPCA) else pca
        left = 1 - np.cumsum(np.asarray(d["mean_ratio"]))
        ks = list(range(1, len(left)))  # the last point is 0 up to rounding
        series[name] = (ks, np.maximum(left[:-1], 1e-16).tolist())
        n_traj, n_points = d["n_traj"], d["n_points"]
    title = f"PCA of {n_traj} sampling trajectories ({n_points} points, Heun)"
    return line_chart(series, png_path, title, "top k components", "variance not explained", True, None, ks, backend)
