"""g_phi, AMED's ~9k-parameter head: from one U-Net feature and the step's two times it predicts
where (r), how far (c) and at which noise level (a) the single extra evaluation of an interval goes."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .errors import AmedError

FEATURE_SIZE = 8  # the tap is an 8x8 feature map; channels are averaged away


@dataclass(frozen=True)
class PredictorConfig:
    """Everything that shapes g_phi. scale_dir > 0 adds the c head, scale_time > 0 the a head."""

    scale_dir: float = 0.01
    scale_time: float = 0.0
    hidden: int = 128
    time_channels: int = 8

    def to_dict(self) -> dict:
        return asdict(self)


def sigma_embedding(sigma: Tensor, channels: int = 8) -> Tensor:
    """Sinusoidal embedding of the raw sigma: frequencies (1e-4)^(k/(channels/2 - 1)), [sin, cos]."""
    half = channels // 2
    # built on the device from scalars (no host-to-device copy, so it can be CUDA-graph captured)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=sigma.device) * (math.log(1e-4) / (half - 1)))
    angles = sigma.reshape(-1, 1).float() * freqs[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class AMEDPredictor(nn.Module):
    """g_phi(feature, t_n, t_{n+1}) -> (r, c, a), each [B,1,1,1].

    r in (0,1) places the intermediate time s = t_{n+1}^r t_n^(1-r); c in 1 +- scale_dir scales the
    step; a in 1 +- scale_time scales the sigma fed to the network at s. Initialised so r ~ 1/2
    (DPM-Solver-2) and c = a = 1 in expectation."""

    def __init__(self, config: PredictorConfig = PredictorConfig()):
        super().__init__()
        self.config = config
        n = FEATURE_SIZE * FEATURE_SIZE
        self.body = nn.Sequential(nn.Linear(n, config.hidden), nn.SiLU(), nn.Linear(config.hidden, 4))
        self.time = nn.Sequential(nn.Linear(config.time_channels, config.time_channels), nn.SiLU())
        width = 4 + 2 * config.time_channels
        self.head_r = nn.Linear(width, 1)
        self.head_c = nn.Linear(width, 1) if config.scale_dir > 0 else None
        self.head_a = nn.Linear(width, 1) if config.scale_time > 0 else None
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, feature: Tensor | None, sigma: Tensor, sigma_next: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """feature: [B,C,8,8] (detached U-Net activation) or None for a zero feature (after AFS)."""
        batch = sigma.shape[0]
        if feature is None:
            pooled = torch.zeros(batch, FEATURE_SIZE * FEATURE_SIZE, device=sigma.device)
        else:
            if feature.shape[-2:] != (FEATURE_SIZE, FEATURE_SIZE):
                raise AmedError(f"AMED predictor needs an 8x8 feature, got {tuple(feature.shape[-2:])}")
            pooled = feature.detach().float().mean(dim=1).flatten(1)
        emb = torch.cat(
            [
                self.body(pooled),
                self.time(sigma_embedding(sigma, self.config.time_channels)),
                self.time(sigma_embedding(sigma_next, self.config.time_channels)),
            ],
            dim=1,
        )
        r = torch.sigmoid(self.head_r(emb))
        c = self._scaled(self.head_c, emb, self.config.scale_dir)
        a = self._scaled(self.head_a, emb, self.config.scale_time)
        return r.view(-1, 1, 1, 1), c.view(-1, 1, 1, 1), a.view(-1, 1, 1, 1)

    @staticmethod
    def _scaled(head: nn.Linear | None, emb: Tensor, scale: float) -> Tensor:
        if head is None:
            return emb.new_ones(emb.shape[0], 1)
        return 1 + scale * (2 * torch.sigmoid(head(emb)) - 1)


def parameter_count(predictor: AMEDPredictor) -> int:
    return sum(p.numel() for p in predictor.parameters())
