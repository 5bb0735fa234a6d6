"""Distillation of a learned solver's predictor against a teacher trajectory.

AMED students (g_phi): per interval, take one student step with the predictor in the loop and pull its
end point towards the teacher's state at t_{n+1}. Single-step students start every interval from the
teacher's state at t_n; multistep students (the iPNDM and DPM-Solver++ plugins) continue from their own
previous output, so the history they learn with is the one they will see when deployed.

EPD students (a per-interval table), as EPD's training loop does: the student runs the whole trajectory
from its own states without detaching them, so a later interval's loss reaches every earlier row; the
last interval's loss is alpha * MSE of Inception features when a feature network is given (EPD's loss;
otherwise the squared error), earlier intervals' squared errors are backpropagated only where the
reference does (EPD-Plugin, or NFE 9 and more); one Adam step per interval, gradients nan_to_num'ed.

The teacher is a more accurate solver on a finer grid of the same schedule type that nests the
student grid exactly ((M+1)(N-1)+1 points), each of its intervals optionally cut into inner sub-steps
(EPD's teachers: 2, spaced with rho = 7). Teacher and student run through the shared solver code
(`solvers.step`), so what is trained is exactly what is deployed."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .amed_network import AMEDNetwork, TorchModel
from .config import MAX_NFE, SamplerConfig, sigma_range
from .epd_table import EPDConfig, EPDTable
from .errors import AmedError
from .networks import image_shape
from .noise import as_int, make_inputs, seed_batches, seed_range, start_state
from .predictor import AMEDPredictor, PredictorConfig
from .predictor_file import PredictorBundle
from .solvers import (
    SolverConfig,
    SolverState,
    get_solver,
    nested_schedule,
    sample,
    solver_names,
    split_intervals,
    step,
)

if TYPE_CHECKING:
    from .fid import Inception

IMAGES_PER_SEED = 2**24  # training image k of a run with seed S has the per-image seed S * 2^24 + k
MAX_DISTILL_SEED = 2**39 - 1  # so training seeds stay below HELD_OUT_SEED
HELD_OUT_SEED = 2**63  # the held-out images' seeds start here: never a training image's
TEACHER_BATCH = 512  # samples per teacher solve: the recipes' batches (16-128) leave a GPU launch-bound


# The recipe defaults that depend on the student family (everything else is shared). AMED students: the
# AMED-Solver recipe with a more accurate teacher than the paper's Heun with M = 1 (iPNDM, M = 5; on the
# bundled model the paper's teacher ends 0.31 RMSE from the true ODE solution at the NFE-5 grid, worse
# than the students it teaches, iPNDM M = 5 0.018: docs/RESULTS.md, "Distillation recipe"). EPD students:
# the released EPD runs' settings (Heun teacher for EPD-Solver, DPM-Solver-2 for the plugin, M = 3 with 2
# inner sub-steps, lr 0.2 cosine-annealed to 0.01, batch 32 / 16).
RECIPES = {
    "amed": dict(teacher="ipndm", teacher_m=5, teacher_inner=1, scale_dir=0.01, scale_time=0.0, batch=128, lr=5e-3),
    "epd": dict(teacher="heun", teacher_m=3, teacher_inner=2, scale_dir=0.05, scale_time=0.05, batch=32, lr=0.2,
                lr_final=0.01),
    "epd_ipndm": dict(teacher="dpm2", teacher_m=3, teacher_inner=2, scale_dir=0.05, scale_time=0.2, batch=16, lr=0.2,
                      lr_final=0.01),
}  # fmt: skip


def recipe_for(student: str) -> dict:
    """The recipe defaults of a student (RECIPES; every AMED student shares the "amed" one)."""
    name = get_solver(student).name
    return dict(RECIPES.get(name) or RECIPES["amed"])


@dataclass(frozen=True)
class DistillConfig:
    """One distillation run. The defaults are the AMED recipe; `for_student` fills in the recipe of
    the student's family (RECIPES) for whatever is not given."""

    nfe: int = 5
    student: str = "amed"
    schedule: str = "time_uniform"
    rho: float | None = None
    afs: bool = True
    teacher: str = "ipndm"
    teacher_m: int = 5
    teacher_inner: int = 1  # sub-steps per teacher interval (rho = 7 between its ends)
    scale_dir: float = 0.01
    scale_time: float = 0.0
    batch: int = 128
    kimg: float = 10.0
    lr: float = 5e-3
    lr_final: float | None = None  # cosine annealing to this absolute rate, stepped per batch; None: constant
    feature_weight: float = 10.0  # EPD's alpha: the weight of the final interval's Inception-feature loss
    seed: int = 0
    tap: str | None = None

    @classmethod
    def for_student(cls, student: str = "amed", **given: object) -> DistillConfig:
        """The config with `student`'s recipe for every field not given (None counts as not given)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise AmedError(f"unknown distillation setting {unknown[0]!r}")
        values = {**recipe_for(student), **{k: v for k, v in given.items() if v is not None}}
        return cls(student=student, **values)

    def __post_init__(self) -> None:
        """Refuse values that would train nothing or diverge (kimg 0 wrote a one-step predictor)."""
        ints = {"nfe": (self.nfe, 1, MAX_NFE), "batch": (self.batch, 1, 1 << 20), "teacher_m": (self.teacher_m, 0, 100)}
        ints.update(seed=(self.seed, 0, MAX_DISTILL_SEED), teacher_inner=(self.teacher_inner, 1, 16))
        for name, (value, lo, hi) in ints.items():
            if as_int(value, name) != value or not lo <= value <= hi:
                raise AmedError(f"distill {name} must be an integer in {lo}..{hi}, got {value!r}")
        floats = {"kimg": (self.kimg, False), "lr": (self.lr, False), "feature_weight": (self.feature_weight, False)}
        if self.lr_final is not None:
            floats["lr_final"] = (self.lr_final, True)
        floats.update({"scale_dir": (self.scale_dir, True), "scale_time": (self.scale_time, True)})
        for name, (value, zero_ok) in floats.items():
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < 0 or (value == 0 and not zero_ok):
                rule = ">= 0" if zero_ok else "> 0"
                raise AmedError(f"distill {name} must be a finite number {rule}, got {value!r}")
        if self.batches * self.batch > IMAGES_PER_SEED:
            raise AmedError(f"distill kimg must be at most {IMAGES_PER_SEED // 1000:,} (one seed's training images)")
        for name in ("scale_dir", "scale_time"):
            if getattr(self, name) >= 1:
                raise AmedError(f"distill {name} must be below 1 (the scale is 1 +- {name}), got {getattr(self, name)}")
        if SolverConfig(self.teacher).uses_predictor:
            raise AmedError(f"teacher {self.teacher!r} needs a predictor itself; use a training-free solver")
        if self.lr_final is not None and self.lr_final > self.lr:
            raise AmedError(f"distill lr_final ({self.lr_final:g}) must not exceed lr ({self.lr:g})")

    @property
    def epd(self) -> bool:
        return get_solver(self.student).predictor == "epd"

    def every_step_loss(self, num_points: int) -> bool:
        """Whether each interval's loss is backpropagated, or only the last one's. EPD's rule: the
        EPD-Solver with fewer than 6 time points (NFE 3/5/7) learns from the last interval alone; the
        plugin and longer trajectories from every interval. AMED students: every interval."""
        return not (get_solver(self.student).name == "epd" and num_points < 6)

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
    fine = split_intervals(fine, cfg.teacher_inner)
    model = TorchModel(AMEDNetwork(network.net), labels)  # the teacher needs no predictor
    solver, state = SolverConfig(cfg.teacher), SolverState()
    states = [x]
    for n in range(len(fine) - 1):
        x = step(model, x, fine, n, solver, state)
        if (n + 1) % ((cfg.teacher_m + 1) * cfg.teacher_inner) == 0:
            states.append(x)
    return states


def training_seeds(cfg: DistillConfig, i: int) -> list[int]:
    """The per-image seeds of training batch i."""
    return seed_range(cfg.seed * IMAGES_PER_SEED + i * cfg.batch, cfg.batch)


def teacher_chunk(
    network: AMEDNetwork, sampler: SamplerConfig, cfg: DistillConfig, batches: range, device: torch.device
) -> list[tuple[Tensor | None, list[Tensor]]]:
    """(labels, teacher states) of each training batch in `batches`, from ONE teacher solve over all their
    samples: each batch keeps its own seed's noise and labels, so training sees what per-batch solves give."""
    shape = image_shape(network.net)
    inputs = [make_inputs(training_seeds(cfg, i), shape, network.label_dim) for i in batches]
    x0, labels = start_state(
        torch.cat([noise for noise, _ in inputs]),
        None if network.label_dim == 0 else torch.cat([lab for _, lab in inputs]),
        sampler.sigma_max,
        device,
    )
    states = teacher_states(network, x0, labels, sampler, cfg)
    parts = [slice(j * cfg.batch, (j + 1) * cfg.batch) for j in range(len(batches))]
    return [(None if labels is None else labels[p], [s[p] for s in states]) for p in parts]


def distill(
    net: nn.Module,
    cfg: DistillConfig,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    minutes: float | None = None,
    on_estimate: Callable[[str], None] | None = None,
    inception: Inception | None = None,
    teacher_batch: int = TEACHER_BATCH,
) -> tuple[AMEDNetwork, SamplerConfig, list[float]]:
    """Train a fresh predictor for `net` (frozen); returns the network+predictor, the sampler config
    and the per-batch mean losses. With `minutes`, training stops after that much wall time (at
    least one batch) and keeps what it learned; `on_estimate` hears the projected duration after
    the first batch, so a long CPU run is announced rather than discovered. `inception` (an EPD
    student only) makes the last interval's loss EPD's Inception-feature loss. The teacher is solved
    for `teacher_batch` samples at once (at least one training batch: the speed study times both)."""
    device = torch.device(device)
    sampler = sampler_for(net, cfg)
    if not sampler.solver_config.uses_predictor:
        students = ", ".join(solver_names(uses_predictor=True))
        raise AmedError(f"student {cfg.student!r} has no predictor to train; use one of {students}")
    if cfg.epd and cfg.tap is not None:
        raise AmedError(f"{cfg.student} learns a table that reads no U-Net feature: drop --tap")
    if inception is not None and not cfg.epd:
        raise AmedError("the Inception-feature loss is EPD's; AMED students learn from the squared error")
    torch.manual_seed(cfg.seed)  # the predictor's initialisation (Kaiming for g_phi, N(0, 1) for a table)
    if cfg.epd:
        table = EPDConfig(sampler.solver_config.spec.parallel_points, cfg.scale_dir, cfg.scale_time)
        predictor: nn.Module = EPDTable(sampler.num_points - 1, table)
    else:
        predictor = AMEDPredictor(PredictorConfig(scale_dir=cfg.scale_dir, scale_time=cfg.scale_time))
    network = AMEDNetwork(net, predictor, cfg.tap).to(device)
    network.net.eval().requires_grad_(False)
    predictor.train()
    opt = torch.optim.Adam(predictor.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    annealing = None
    if cfg.lr_final is not None:  # EPD's: T_max = floor(1000 kimg / batch) + 1, stepped once per batch
        steps = int(cfg.kimg * 1000 // cfg.batch) + 1
        annealing = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=cfg.lr_final)
    train_batch = _epd_batch if cfg.epd else _amed_batch
    batches = cfg.batches
    per_solve = max(1, teacher_batch // cfg.batch)  # training batches per teacher solve
    losses: list[float] = []
    began = time.monotonic()
    bar = tqdm(range(batches), desc=f"distill {cfg.student} NFE {cfg.nfe}", unit="batch", disable=not progress)
    for i in bar:
        if i and minutes is not None and time.monotonic() - began > 60 * minutes:
            bar.close()
            break
        if i % per_solve == 0:
            solve_began = time.monotonic()
            chunk = teacher_chunk(network, sampler, cfg, range(i, min(i + per_solve, batches)), device)
            solve_seconds = time.monotonic() - solve_began
        labels, targets = chunk[i % per_solve]
        batch_loss = train_batch(TorchModel(network, labels), opt, sampler, targets, cfg, inception)
        if annealing is not None:
            annealing.step()
        losses.append(batch_loss)
        if not math.isfinite(batch_loss):
            raise AmedError(f"distillation diverged (loss {batch_loss} at batch {i}); lower --lr")
        bar.set_postfix(loss=f"{batch_loss:.4g}")
        if on_step is not None:
            on_step(i, batch_loss)
        if i == 0 and on_estimate is not None:  # the first batch, with its share of the teacher solve
            first = time.monotonic() - began - solve_seconds + solve_seconds / len(chunk)
            on_estimate(_estimate(first, batches, cfg, device, minutes))
    predictor.eval()
    return network, sampler, losses


def _squared_error(x: Tensor, target: Tensor) -> Tensor:
    """Per-sample sum of squared errors, averaged over the batch (both recipes' L2 term)."""
    return (x - target).square().flatten(1).sum(1).mean()


def _amed_batch(
    model: TorchModel, opt: torch.optim.Optimizer, sampler: SamplerConfig, targets: list[Tensor], cfg, inception
) -> float:
    """One batch of an AMED student: each interval's step trained alone against the teacher's state."""
    multistep = sampler.solver_config.spec.multistep
    state, total, x = SolverState(), 0.0, targets[0]
    for n in range(sampler.num_points - 1):
        start = x if multistep else targets[n]
        x_next = step(model, start, sampler.t_steps, n, sampler.solver_config, state)
        loss = _squared_error(x_next, targets[n + 1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state.detach_history()  # multistep students: the history is data
        x = x_next.detach()
        total += loss.item() / (sampler.num_points - 1)
    return total


def _epd_batch(
    model: TorchModel,
    opt: torch.optim.Optimizer,
    sampler: SamplerConfig,
    targets: list[Tensor],
    cfg: DistillConfig,
    inception: Inception | None,
) -> float:
    """One batch of an EPD student: the whole trajectory from its own, undetached states (see the
    module docstring); returns the mean of the intervals' losses."""
    from .fid import differentiable_features

    every_step = cfg.every_step_loss(sampler.num_points)
    last = sampler.num_points - 2
    state, total, x = SolverState(), 0.0, targets[0]
    params = [p for group in opt.param_groups for p in group["params"]]
    for n in range(last + 1):
        opt.zero_grad(set_to_none=True)
        x = step(model, x, sampler.t_steps, n, sampler.solver_config, state)
        state.detach_history()  # EPD-Plugin's slope buffer holds detached slopes
        if n == last and inception is not None:
            with torch.no_grad():
                wanted = differentiable_features(targets[n + 1], inception)
            loss = cfg.feature_weight * (differentiable_features(x, inception) - wanted).square().mean()
        else:
            loss = _squared_error(x, targets[n + 1])
        if every_step or n == last:
            loss.backward(retain_graph=n < last)
            for p in params:
                if p.grad is not None:
                    torch.nan_to_num_(p.grad, nan=0.0, posinf=1e5, neginf=-1e5)
            opt.step()
        total += loss.item() / (last + 1)
    return total


def _estimate(seconds_per_batch: float, batches: int, cfg: DistillConfig, device: torch.device, minutes) -> str:
    total = seconds_per_batch * batches / 60
    text = f"distill: {batches} batches of {cfg.batch} at {seconds_per_batch:.1f} s each on {device.type}"
    text += f": ~{total:.0f} min"
    if minutes is not None and minutes < total:
        return text + f"; stopping after --minutes {minutes:g} (about {minutes / total * cfg.kimg:.2g} kimg)"
    return text + ("; --minutes M stops early and keeps what was learned" if total > 5 else "")


@torch.no_grad()
def endpoint_rmse(
    network: AMEDNetwork,
    solver: SolverConfig,
    sampler: SamplerConfig,
    cfg: DistillConfig,
    seeds: Sequence[int],
    batch: int,
) -> float:
    """RMSE of a solver's final x against the teacher's, on the images of the given (held-out) seeds."""
    return endpoint_rmses(network, [solver], sampler, cfg, seeds, batch)[0]


@torch.no_grad()
def endpoint_rmses(
    network: AMEDNetwork,
    solvers: Sequence[SolverConfig],
    sampler: SamplerConfig,
    cfg: DistillConfig,
    seeds: Sequence[int],
    batch: int,
) -> list[float]:
    """`endpoint_rmse` for several solvers, solving the teacher once per batch of seeds for all of them."""
    device = next(network.net.parameters()).device
    shape = image_shape(network.net)
    totals, count = [0.0] * len(solvers), 0
    for chunk in seed_batches(seeds, batch):
        noise, labels = make_inputs(chunk, shape, network.label_dim)
        x0, labels = start_state(noise, labels, sampler.sigma_max, device)
        target = teacher_states(network, x0, labels, sampler, cfg)[-1]
        for i, solver in enumerate(solvers):
            x, _ = sample(TorchModel(network, labels), x0, sampler.t_steps, solver)
            totals[i] += (x - target).square().sum().item()
        count += x0.numel()
    return [math.sqrt(total / count) for total in totals]


@contextlib.contextmanager
def compiled_unet(net: nn.Module, enabled: bool = True) -> Iterator[None]:
    """While the block runs, `net`'s U-Net (`net.model`, frozen) goes through torch.compile: at the recipes'
    batches the eager network is launch-bound. The caller's network is restored afterwards."""
    if not enabled:
        yield
        return
    unet = net.model
    net.model = torch.compile(unet)
    try:
        yield
    finally:
        net.model = unet


def distill_predictor(
    net: nn.Module,
    checkpoint_sha256: str,
    cfg: DistillConfig,
    device: torch.device | str,
    progress: bool = True,
    minutes: float | None = None,
    on_estimate: Callable[[str], None] | None = None,
    model_sha256: str | None = None,
    inception: Inception | None = None,
    compile: bool = False,
) -> PredictorBundle:
    """`distill`, then measure the held-out error to the teacher (and DPM-Solver-2's, for the AMED-Solver)
    and pack everything a predictor file records (the batches actually trained, under a time budget).
    `compile`: the frozen U-Net through torch.compile meanwhile (`compiled_unet`)."""
    with compiled_unet(net, compile):
        network, sampler, losses = distill(
            net, cfg, device, progress, minutes=minutes, on_estimate=on_estimate, inception=inception
        )
        bsz = min(cfg.batch, 64)
        solvers = [sampler.solver_config]
        if sampler.solver == "amed":
            solvers.append(SolverConfig("dpm2", sampler.afs))  # its base solver at the same NFE, for reference
        errors = endpoint_rmses(network, solvers, sampler, cfg, seed_range(HELD_OUT_SEED, 2 * bsz), bsz)
    summary = {"final_loss": losses[-1], "held_out_rmse": errors[0], "batches_trained": len(losses)}
    summary["kimg_trained"] = len(losses) * cfg.batch / 1000
    if len(errors) > 1:
        summary["held_out_rmse_dpm2"] = errors[1]
    if cfg.epd:
        summary["last_interval_loss"] = "inception features" if inception is not None else "squared error"
        if inception is not None:
            summary["inception_sha256"] = inception.sha256
    training = {"distill": cfg.to_dict(), **summary}
    return PredictorBundle(
        network.predictor.cpu(), sampler, network.tap, checkpoint_sha256, training, model_sha256=model_sha256
    )
