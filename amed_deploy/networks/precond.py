"""Preconditioners D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) of EDM's four parameterisations.

Constructors take exactly the official keyword arguments, so `_init_kwargs` recovered from an official
snapshot builds these classes directly, and the inner U-Net is registered as `model` so parameter
names carry the official `model.` prefix.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..solvers.schedules import vp_sigma
from .dhariwal import DhariwalUNet
from .songunet import SongUNet

__all__ = ["MODEL_TYPES", "EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond"]

MODEL_TYPES: dict[str, type[nn.Module]] = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}

Output = torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...]]
Coefficients = tuple[torch.Tensor | float, torch.Tensor, torch.Tensor | float, torch.Tensor]
# Constructor arguments every preconditioner takes (handled by `_setup`); the others are its own.
_SHARED_ARGS = ("img_resolution", "img_channels", "label_dim", "use_fp16")


class _Precond(nn.Module):
    """Shared plumbing: argument normalisation, fp16 policy, taps. Subclasses give the coefficients."""

    @classmethod
    def own_defaults(cls) -> dict[str, Any]:
        """Defaults of the constructor's own keyword arguments (noise parameterisation, model_type): what
        a checkpoint whose kwargs leave them out was built with."""
        params = inspect.signature(cls.__init__).parameters.values()
        return {p.name: p.default for p in params if p.default is not p.empty and p.name not in _SHARED_ARGS}

    @classmethod
    def noise_range(cls, kwargs: Mapping[str, Any], buffers: Mapping[str, torch.Tensor]) -> tuple[float, float]:
        """(sigma_min, sigma_max) of a network with these constructor kwargs (defaults included) and stored
        buffers, without building it. Damaged kwargs raise KeyError, TypeError, ValueError, IndexError or
        OverflowError."""
        return float(kwargs["sigma_min"]), float(kwargs["sigma_max"])

    def _setup(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int,
        use_fp16: bool,
        model_type: str,
        out_channels: int,
        model_kwargs: dict,
    ) -> None:
        if model_type not in MODEL_TYPES:
            raise ValueError(f"unknown model_type {model_type!r}; expected one of {sorted(MODEL_TYPES)}")
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.model_type = model_type
        self.model = MODEL_TYPES[model_type](
            img_resolution=img_resolution,
            in_channels=img_channels,
            out_channels=out_channels,
            label_dim=label_dim,
            **model_kwargs,
        )

    @property
    def tap_shapes(self) -> dict[str, tuple[int, int, int]]:
        """All valid tap names with their per-sample (C, H, W)."""
        return dict(self.model.tap_shapes)

    def tap_shape(self, name: str) -> tuple[int, int, int]:
        """(C, H, W) of a tap, so callers can check it (e.g. 8x8) before tracing; ValueError if unknown."""
        return self.model.tap_shape(name)

    def round_sigma(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """Noise levels the network supports (continuous parameterisations: all of them)."""
        return torch.as_tensor(sigma)

    def _compute_dtype(self, x: torch.Tensor, force_fp32: bool) -> torch.dtype:
        """The dtype the U-Net's weights were cast to for deployment (fp16/bf16), else fp16 per the
        official use_fp16 policy (CUDA only); the preconditioning itself stays fp32."""
        first = next(self.model.parameters(), None)
        if first is not None and first.dtype in (torch.float16, torch.bfloat16):
            return first.dtype
        return torch.float16 if self.use_fp16 and not force_fp32 and x.device.type == "cuda" else torch.float32

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        """(c_skip, c_out, c_in, c_noise) for sigma of shape [B, 1, 1, 1]."""
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,
        sigma: float | torch.Tensor,
        class_labels: torch.Tensor | None = None,
        force_fp32: bool = False,
        augment_labels: torch.Tensor | None = None,
        taps: Sequence[str] = (),
    ) -> Output:
        """Denoised D(x, sigma); with taps, (D, features) from the same forward pass."""
        taps = tuple(taps)  # validated by the U-Net, which raises ValueError listing valid names
        x = x.to(torch.float32)
        if not isinstance(sigma, torch.Tensor):
            sigma = torch.as_tensor(sigma, device=x.device)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([x.shape[0], self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        dtype = self._compute_dtype(x, force_fp32)

        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        result = self.model(
            (c_in * x).to(dtype),
            c_noise.flatten(),
            class_labels,
            augment_labels=augment_labels,
            taps=taps,
        )
        f_x, feats = result if taps else (result, ())
        d_x = c_skip * x + c_out * f_x[:, : self.img_channels].to(torch.float32)
        return (d_x, feats) if taps else d_x


class EDMPrecond(_Precond):
    """EDM's own parameterisation (all released edm-* checkpoints)."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float = 0,
        sigma_max: float = float("inf"),
        sigma_data: float = 0.5,
        model_type: str = "DhariwalUNet",
        **model_kwargs,
    ) -> None:
        super().__init__()
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self._setup(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels, model_kwargs)

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise


class VPPrecond(_Precond):
    """Variance-preserving (DDPM++ as trained by Song et al.) parameterisation."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        beta_d: float = 19.9,
        beta_min: float = 0.1,
        M: int = 1000,
        epsilon_t: float = 1e-5,
        model_type: str = "SongUNet",
        **model_kwargs,
    ) -> None:
        super().__init__()
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.M = M
        self.epsilon_t = epsilon_t
        self.sigma_min = float(self.sigma(torch.tensor(epsilon_t, device="cpu")))
        self.sigma_max = float(self.sigma(torch.tensor(1.0, device="cpu")))
        self._setup(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels, model_kwargs)

    def sigma(self, t: float | torch.Tensor) -> torch.Tensor:
        """sigma(t) of the VP SDE in EDM's float32 exp() - 1, so sigma_min/sigma_max match EDM's."""
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t**2) + self.beta_min * t).exp() - 1).sqrt()

    @classmethod
    def noise_range(cls, kwargs: Mapping[str, Any], buffers: Mapping[str, torch.Tensor]) -> tuple[float, float]:
        """sigma(epsilon_t) .. sigma(1) exactly (float64, expm1); the constructor's own values go through
        the float32 `sigma`, as EDM's do, which is a few percent off at epsilon_t."""
        beta_d, beta_min = kwargs["beta_d"], kwargs["beta_min"]
        return vp_sigma(kwargs["epsilon_t"], beta_d, beta_min), vp_sigma(1.0, beta_d, beta_min)

    def sigma_inv(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """t(sigma), the inverse of `sigma`."""
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        c_in = 1 / (sigma**2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        return 1, -sigma, c_in, c_noise


class VEPrecond(_Precond):
    """Variance-exploding (NCSN++) parameterisation."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float = 0.02,
        sigma_max: float = 100,
        model_type: str = "SongUNet",
        **model_kwargs,
    ) -> None:
        super().__init__()
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self._setup(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels, model_kwargs)

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        return 1, sigma, 1, (0.5 * sigma).log()


class iDDPMPrecond(_Precond):
    """Improved-DDPM parameterisation: discrete noise levels `u`, network predicts 2x channels."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        C_1: float = 0.001,
        C_2: float = 0.008,
        M: int = 1000,
        model_type: str = "DhariwalUNet",
        **model_kwargs,
    ) -> None:
        super().__init__()
        self.C_1 = C_1
        self.C_2 = C_2
        self.M = M
        self._setup(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels * 2, model_kwargs)
        # Built on the CPU explicitly so construction also works under a meta-device context.
        u = torch.zeros(M + 1, device="cpu")
        for j in range(M, 0, -1):
            ratio = (self.alpha_bar(j - 1) / self.alpha_bar(j)).clip(min=C_1)
            u[j - 1] = ((u[j] ** 2 + 1) / ratio - 1).sqrt()
        self.register_buffer("u", u)
        self.sigma_min = float(u[M - 1])
        self.sigma_max = float(u[0])

    @classmethod
    def noise_range(cls, kwargs: Mapping[str, Any], buffers: Mapping[str, torch.Tensor]) -> tuple[float, float]:
        """The extremes of the stored noise levels u (u[M - 1] .. u[0]), as the constructor sets them."""
        u = buffers["u"]
        return float(u[int(kwargs["M"]) - 1]), float(u[0])

    def alpha_bar(self, j: int | torch.Tensor) -> torch.Tensor:
        """Cosine-schedule alpha_bar at discrete step j."""
        j = torch.as_tensor(j, device="cpu")
        return (0.5 * math.pi * j / self.M / (self.C_2 + 1)).sin() ** 2

    def round_sigma(self, sigma: float | torch.Tensor, return_index: bool = False) -> torch.Tensor:
        """Nearest supported noise level u_j (or its index j)."""
        sigma = torch.as_tensor(sigma)
        diff = (sigma.to(self.u.device, torch.float32).reshape(-1, 1) - self.u.reshape(1, -1)).abs()
        index = diff.argmin(dim=1)
        result = index if return_index else self.u[index].to(sigma.dtype)
        return result.reshape(sigma.shape).to(sigma.device)

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        c_in = 1 / (sigma**2 + 1).sqrt()
        c_noise = self.M - 1 - self.round_sigma(sigma, return_index=True).to(torch.float32)
        return 1, -sigma, c_in, c_noise
