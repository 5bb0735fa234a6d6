"""Training a small class-conditional EDM model (the bundled demo model): EDM loss, EMA, bf16
autocast, seeded, and resumable, so training can span several time-limited GPU sessions.

The state file (`train-state.pt`) holds network, EMA, optimiser, step counters, RNG state and the
dataset's name; a run stopped at its time budget resumes from it exactly. Without it, `init` (an exported checkpoint)
restarts from saved weights with a fresh optimiser."""

from __future__ import annotations

import copy
import io
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .checkpoint.build import build_model
from .checkpoint.format import Checkpoint, save_checkpoint
from .checkpoint.load import load_checkpoint
from .errors import AmedError
from .files import atomic_write_bytes
from .networks import build_network

STATE_FILE, CHECKPOINT_FILE, BUNDLE_FILE = "train-state.pt", "edm.pt", "edm-fp16.safetensors"
RUN_FILES = (STATE_FILE, CHECKPOINT_FILE, BUNDLE_FILE)  # what a run folder holds (rewritten as training goes)


@dataclass(frozen=True)
class TrainConfig:
    """Network size and EDM training recipe (P_mean -1.2, P_std 1.2, sigma_data 0.5)."""

    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    batch: int = 256
    lr: float = 1e-3
    lr_rampup_kimg: float = 100.0
    ema_halflife_kimg: float = 50.0
    ema_rampup: float = 0.05
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5
    seed: int = 0
    xflip: bool = False  # mirror each training image with probability 1/2 (drawn from the run's generator)
    extra: dict = field(default_factory=dict)

    def network_kwargs(self, resolution: int, channels: int, label_dim: int) -> dict:
        return dict(
            img_resolution=resolution,
            img_channels=channels,
            label_dim=label_dim,
            sigma_data=self.sigma_data,
            model_type="SongUNet",
            model_channels=self.model_channels,
            channel_mult=list(self.channel_mult),
            num_blocks=self.num_blocks,
            attn_resolutions=list(self.attn_resolutions),
            dropout=self.dropout,
            embedding_type="positional",
            encoder_type="standard",
            decoder_type="standard",
        )


def edm_loss(net: nn.Module, images: Tensor, labels: Tensor | None, cfg: TrainConfig, gen: torch.Generator) -> Tensor:
    """EDM's weighted denoising loss with log-normal noise levels."""
    b = images.shape[0]
    rnd = torch.randn(b, 1, 1, 1, device=images.device, generator=gen)
    sigma = (rnd * cfg.p_std + cfg.p_mean).exp()
    weight = (sigma**2 + cfg.sigma_data**2) / (sigma * cfg.sigma_data) ** 2
    noise = torch.randn(images.shape, device=images.device, generator=gen) * sigma
    denoised = net(images + noise, sigma, labels)
    return (weight * (denoised - images).square()).mean()


def xflip_batch(images: Tensor, gen: torch.Generator) -> Tensor:
    """Each image mirrored left-right with probability 1/2; the coins come from `gen`, so a resumed
    run (whose generator state is saved) draws the same flips as an uninterrupted one."""
    flip = torch.rand(images.shape[0], device=images.device, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def _ema_beta(cfg: TrainConfig, nimg: int) -> float:
    halflife = (
        min(cfg.ema_halflife_kimg * 1000, nimg * cfg.ema_rampup) if cfg.ema_rampup else cfg.ema_halflife_kimg * 1000
    )
    return 0.5 ** (cfg.batch / max(halflife, 1e-8))


def train(
    images: Tensor,
    labels: Tensor,
    out_dir: str | os.PathLike,
    cfg: TrainConfig,
    minutes: float,
    total_kimg: float,
    device: str | torch.device = "cuda",
    init: str | os.PathLike | None = None,
    progress: bool = True,
    dataset: str | None = None,
    compile: bool = False,
) -> dict:
    """Train until `minutes` of wall time or `total_kimg` images, then save state and the EMA
    checkpoint (`edm.pt`, plus `edm-fp16.safetensors` for bundling). Returns a summary. `compile`
    computes the loss through torch.compile of the network (its weights, and so the state saved, are
    the network's own).

    `dataset` names the training data; it is recorded, and a run folder made with another refuses to resume."""
    device = torch.device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    label_dim = labels.shape[1]
    kwargs = cfg.network_kwargs(images.shape[-1], images.shape[1], label_dim)
    torch.manual_seed(cfg.seed)  # weight init
    net = build_network("EDMPrecond", kwargs).to(device).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    nimg, steps, seconds = 0, 0, 0.0
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        made_with = state.get("dataset", dataset)  # a state file from before datasets were recorded resumes
        if made_with != dataset:
            raise AmedError(
                f"{state_path} is a run on {made_with or 'unnamed data'}, not {dataset or 'unnamed data'}; "
                "resume it with its own --data, or use a new --out"
            )
        if state["network_kwargs"] != kwargs:
            raise AmedError(f"{state_path} was made with another network configuration; use a new --out")
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"].cpu())
        nimg, steps, seconds = state["nimg"], state["steps"], state["seconds"]
    elif init is not None:
        warm = build_model(load_checkpoint(init))
        net.load_state_dict(warm.state_dict())
        ema.load_state_dict(warm.state_dict())
        nimg = int(load_checkpoint(init).metadata.get("training", {}).get("nimg", 0))
    images, labels = images.to(device), labels.to(device)
    torch.backends.cudnn.benchmark = True
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    forward = torch.compile(net) if compile else net
    start, last_save = time.monotonic(), time.monotonic()
    bar = tqdm(
        total=int(total_kimg * 1000),
        initial=min(nimg, int(total_kimg * 1000)),
        unit="img",
        unit_scale=True,
        desc="train-edm",
        disable=not progress,
    )
    losses: list[float] = []
    while nimg < total_kimg * 1000 and time.monotonic() - start < minutes * 60:
        idx = torch.randint(images.shape[0], (cfg.batch,), device=device, generator=gen)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(nimg / max(cfg.lr_rampup_kimg * 1000, 1e-8), 1.0)
        x = xflip_batch(images[idx], gen) if cfg.xflip else images[idx]
        with autocast:
            loss = edm_loss(forward, x, labels[idx], cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in net.parameters():
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0, posinf=1e5, neginf=-1e5)
        opt.step()
        nimg += cfg.batch
        steps += 1
        beta = _ema_beta(cfg, nimg)
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1 - beta)
        if steps % 50 == 0 or not losses:  # the first step too: a short call still reports a loss
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        bar.update(cfg.batch)
        if time.monotonic() - last_save > 300:
            _save_state(
                state_path, net, ema, opt, gen, nimg, steps, seconds + time.monotonic() - start, kwargs, dataset
            )
            last_save = time.monotonic()
    bar.close()
    seconds += time.monotonic() - start
    _save_state(state_path, net, ema, opt, gen, nimg, steps, seconds, kwargs, dataset)
    meta = {
        "training": {
            "dataset": dataset,
            "nimg": nimg,
            "steps": steps,
            "seconds": round(seconds, 1),
            "config": asdict(cfg),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        }
    }
    ckpt = Checkpoint("EDMPrecond", kwargs, {k: v.detach().cpu() for k, v in ema.state_dict().items()}, meta)
    save_checkpoint(ckpt, out / CHECKPOINT_FILE)
    save_checkpoint(ckpt, out / BUNDLE_FILE, dtype="fp16")
    return {
        "nimg": nimg,
        "steps": steps,
        "seconds": seconds,
        "recent_loss": sum(losses[-20:]) / len(losses[-20:]) if losses else None,  # None: no step this call
    }


def _save_state(path: Path, net, ema, opt, gen, nimg, steps, seconds, kwargs, dataset) -> None:
    buf = io.BytesIO()
    torch.save(
        {
            "net": net.state_dict(),
            "ema": ema.state_dict(),
            "opt": opt.state_dict(),
            "gen": gen.get_state(),
            "nimg": nimg,
            "steps": steps,
            "seconds": seconds,
            "network_kwargs": kwargs,
            "dataset": dataset,
        },
        buf,
    )
    atomic_write_bytes(path, buf.getvalue())
