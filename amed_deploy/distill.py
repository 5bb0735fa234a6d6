"""Distillation of g_phi: per interval, take one student step with the predictor in the loop and pull
its end point towards the teacher's state at t_{n+1}. Single-step students start every interval from
the teacher's state at t_n; multistep students (the iPNDM and DPM-Solver++ plugins) continue from their
own previous output, so the history they learn with is the one they will see when deployed.

The teacher is a more accurate solver on a finer grid of the same schedule type that nests the
student grid exactly ((M+1)(N-1)+1 points). Both teacher and student run through the shared solver
code (`solvers.step`), so what is trained is exactly what is deployed."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .amed_network import AMEDNetwork, TorchModel
from .config import MAX_NFE, SamplerConfig, sigma_range
from .errors import AmedError
from .networks import image_shape
from .noise import as_int, make_inputs, start_state
from .predictor import AMEDPredictor, PredictorConfig
from .predictor_file import PredictorBundle
from .solvers import SolverConfig, SolverState, nested_schedule, sample, solver_names, step

MAX_DISTILL_SEED = 2**40  # training seeds are seed * 1_000_003 + i, which must stay below 2^64
HELD_OUT_SEEDS = range(10**9, 10**9 + 2)  # never used in training (training seeds are seed * 1_000_003 + i)


@dataclass(frozen=True)
class DistillConfig:
    """The AMED-Solver recipe (time_uniform, AFS, scale_dir 0.01, Adam lr 5e-3, 10k trajectories) with a
    more accurate teacher than the paper's Heun with M = 1: iPNDM with M = 5. On the bundled model the
    paper's teacher ends 0.31 RMSE from the true ODE solution at the NFE-5 grid (worse than the students
    it teaches), iPNDM M = 5 ends 0.018 away (docs/RESULTS.md, "Distillation recipe")."""

    nfe: int = 5
    student: str = "amed"
    schedule: str = "time_uniform"
    rho: float | None = None
    afs: bool = True
    teacher: str = "ipndm"
    teacher_m: int = 5
    scale_dir: float = 0.01
    scale_time: float = 0.0
    batch: int = 128
    kimg: float = 10.0
    lr: float = 5e-3
    seed: int = 0
    tap: str | None = None

    def __post_init__(self) -> None:
        """Refuse values that would train nothing or diverge (kimg 0 wrote a one-step predictor)."""
        ints = {"nfe": (self.nfe, 1, MAX_NFE), "batch": (self.batch, 1, 1 << 20), "teacher_m": (self.teacher_m, 0, 100)}
        ints["seed"] = (self.seed, 0, MAX_DISTILL_SEED)
        for name, (value, lo, hi) in ints.items():
            if as_int(value, name) != value or not lo <= value <= hi:
                raise AmedError(f"distill {name} must be an integer in {lo}..{hi}, got {value!r}")
        floats = {"kimg": (self.kimg, False), "lr": (self.lr, False)}
        floats.update({"scale_dir": (self.scale_dir, True), "scale_time": (self.scale_time, True)})
        for name, (value, zero_ok) in floats.items():
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < 0 or (value == 0 and not zero_ok):
                rule = ">= 0" if zero_ok else "> 0"
                raise AmedError(f"distill {name} must be a finite number {rule}, got {value!r}")
        for name in ("scale_dir", "scale_time"):
            if getattr(self, name) >= 1:
                raise AmedError(f"distill {name} must be below 1 (the scale is 1 +- {name}), got {getattr(self, name)}")
        if SolverConfig(self.teacher).uses_predictor:
            raise AmedError(f"teacher {self.teacher!r} needs a predictor itself; use a training-free solver")

    @property
    def batches(self) -> int:
        return max(1, math.ceil(self.kimg * 1000 / self.batch))

    def to_dict(self) -> dict:
        return asdict(self)


def sampler_for(net: nn.Module, cfg: DistillConfig) -> SamplerConfig:
    return SamplerConfig.create(cfg.student, cfg.nfe, cfg.schedule, sigma_range(net), cfg.afs, cfg.rho)


@torch.no_grad()
def teacher_states(
    network: AMEDNetwork, x: Tensor, labels: Tensor | None, sampler: SamplerConfig, cfg: DistillConfig
) -> list[Tensor]:
    """The teacher's states at every student time point (a finer solve, read at the nested points)."""
    fine = nested_schedule(
        sampler.schedule, sampler.num_points, cfg.teacher_m, sampler.sigma_min, sampler.sigma_max, sampler.rho
    )
    model = TorchModel(AMEDNetwork(network.net), labels)  # the teacher needs no predictor
    solver, state = SolverConfig(cfg.teacher), SolverState()
    states = [x]
    for n in range(len(fine) - 1):
        x = step(model, x, fine, n, solver, state)
        if (n + 1) % (cfg.teacher_m + 1) == 0:
            states.append(x)
    return states


def distill(
    net: nn.Module,
    cfg: DistillConfig,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    minutes: float | None = None,
    on_estimate: Callable[[str], None] | None = None,
) -> tuple[AMEDNetwork, SamplerConfig, list[float]]:
    """Train a fresh predictor for `net` (frozen); returns the network+predictor, the sampler config
    and the per-batch mean losses. With `minutes`, training stops after that much wall time (at
    least one batch) and keeps what it learned; `on_estimate` hears the projected duration after
    the first batch, so a long CPU run is announced rather than discovered."""
    device = torch.device(device)
    sampler = sampler_for(net, cfg)
    if not sampler.solver_config.uses_predictor:
        students = ", ".join(solver_names(uses_predictor=True))
        raise AmedError(f"student {cfg.student!r} has no predictor to train; use one of {students}")
    torch.manual_seed(cfg.seed)  # Kaiming init of the predictor
    predictor = AMEDPredictor(PredictorConfig(scale_dir=cfg.scale_dir, scale_time=cfg.scale_time))
    network = AMEDNetwork(net, predictor, cfg.tap).to(device)
    network.net.eval().requires_grad_(False)
    predictor.train()
    multistep = sampler.solver_config.spec.multistep
    opt = torch.optim.Adam(predictor.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    shape = image_shape(net)
    batches = cfg.batches
    losses: list[float] = []
    began = time.monotonic()
    bar = tqdm(range(batches), desc=f"distill {cfg.student} NFE {cfg.nfe}", unit="batch", disable=not progress)
    for i in bar:
        if i and minutes is not None and time.monotonic() - began > 60 * minutes:
            bar.close()
            break
        noise, labels = make_inputs(cfg.seed * 1_000_003 + i, cfg.batch, shape, network.label_dim)
        x0, labels = start_state(noise, labels, sampler.sigma_max, device)
        targets = teacher_states(network, x0, labels, sampler, cfg)
        model = TorchModel(network, labels)
        state = SolverState()
        batch_loss = 0.0
        x = targets[0]
        for n in range(sampler.num_points - 1):
            start = x if multistep else targets[n]
            x_next = step(model, start, sampler.t_steps, n, sampler.solver_config, state)
            loss = (x_next - targets[n + 1]).square().flatten(1).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state.detach_history()  # multistep students: the history is data
            x = x_next.detach()
            batch_loss += loss.item() / (sampler.num_points - 1)
        losses.append(batch_loss)
        if not math.isfinite(batch_loss):
            raise AmedError(f"distillation diverged (loss {batch_loss} at batch {i}); lower --lr")
        bar.set_postfix(loss=f"{batch_loss:.4g}")
        if on_step is not None:
            on_step(i, batch_loss)
        if i == 0 and on_estimate is not None:
            on_estimate(_estimate(time.monotonic() - began, batches, cfg, device, minutes))
    predictor.eval()
    return network, sampler, losses


def _estimate(seconds_per_batch: float, batches: int, cfg: DistillConfig, device: torch.device, minutes) -> str:
    total = seconds_per_batch * batches / 60
    text = f"distill: {batches} batches of {cfg.batch} at {seconds_per_batch:.1f} s each on {device.type}"
    text += f": ~{total:.0f} min"
    if minutes is not None and minutes < total:
        return text + f"; stopping after --minutes {minutes:g} (about {minutes / total * cfg.kimg:.2g} kimg)"
    return text + ("; --minutes M stops early and keeps what was learned" if total > 5 else "")


@torch.no_grad()
def endpoint_rmse(
    network: AMEDNetwork, solver: SolverConfig, sampler: SamplerConfig, cfg: DistillConfig, seeds: range, batch: int
) -> float:
    """RMSE of a solver's final x against the teacher's, on noise from the given seeds (held out)."""
    return endpoint_rmses(network, [solver], sampler, cfg, seeds, batch)[0]


@torch.no_grad()
def endpoint_rmses(
    network: AMEDNetwork,
    solvers: Sequence[SolverConfig],
    sampler: SamplerConfig,
    cfg: DistillConfig,
    seeds: range,
    batch: int,
) -> list[float]:
    """`endpoint_rmse` for several solvers, solving the teacher once per seed for all of them."""
    device = next(network.net.parameters()).device
    shape = image_shape(network.net)
    totals, count = [0.0] * len(solvers), 0
    for seed in seeds:
        noise, labels = make_inputs(seed, batch, shape, network.label_dim)
        x0, labels = start_state(noise, labels, sampler.sigma_max, device)
        target = teacher_states(network, x0, labels, sampler, cfg)[-1]
        for i, solver in enumerate(solvers):
            x, _ = sample(TorchModel(network, labels), x0, sampler.t_steps, solver)
            totals[i] += (x - target).square().sum().item()
        count += x0.numel()
    return [math.sqrt(total / count) for total in totals]


def distill_predictor(
    net: nn.Module,
    checkpoint_sha256: str,
    cfg: DistillConfig,
    device: torch.device | str,
    progress: bool = True,
    minutes: float | None = None,
    on_estimate: Callable[[str], None] | None = None,
    model_sha256: str | None = None,
) -> PredictorBundle:
    """`distill`, then measure the held-out error to the teacher (and DPM-Solver-2's, for the AMED-Solver)
    and pack everything a predictor file records (the batches actually trained, under a time budget)."""
    network, sampler, losses = distill(net, cfg, device, progress, minutes=minutes, on_estimate=on_estimate)
    bsz = min(cfg.batch, 64)
    solvers = [sampler.solver_config]
    if sampler.solver == "amed":
        solvers.append(SolverConfig("dpm2", sampler.afs))  # its base solver at the same NFE, for reference
    errors = endpoint_rmses(network, solvers, sampler, cfg, HELD_OUT_SEEDS, bsz)
    summary = {"final_loss": losses[-1], "held_out_rmse": errors[0], "batches_trained": len(losses)}
    summary["kimg_trained"] = len(losses) * cfg.batch / 1000
    if len(errors) > 1:
        summary["held_out_rmse_dpm2"] = errors[1]
    training = {"distill": cfg.to_dict(), **summary}
    return PredictorBundle(
        network.predictor.cpu(), sampler, network.tap, checkpoint_sha256, training, model_sha256=model_sha256
    )
