"""Building blocks of the EDM U-Nets, re-implemented from the documented behaviour.

Parameter and buffer names, shapes and registration order follow the official EDM layers, so official
state dicts load by name. Every layer casts its fp32 weights to the input dtype, which is how EDM runs
its `use_fp16` mode; GroupNorm statistics and attention softmax stay in fp32 so fp16 graphs are safe.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Conv2d",
    "FourierEmbedding",
    "GroupNorm",
    "Linear",
    "PositionalEmbedding",
    "UNetBlock",
    "attention",
    "TappableUNet",
    "init_tensor",
]


def init_tensor(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """Random initial values with the variance of the named scheme (EDM's init_mode choices)."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init_mode {mode!r}")


class Linear(nn.Module):
    """y = x W^T + b with `weight [out, in]` and optional `bias [out]`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1,
        init_bias: float = 0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(init_tensor([out_features, in_features], **fans) * init_weight)
        self.bias = nn.Parameter(init_tensor([out_features], **fans) * init_bias) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y


class Conv2d(nn.Module):
    """kxk convolution with optional 2x up/down resampling through a separable FIR filter.

    kernel=0 means resampling only (no weight). The buffer `resample_filter` exists only when up or
    down is set, as in the official state dicts. The filter is expanded to a depthwise weight at run
    time with `expand` (no `tile`), which keeps the module exportable with the dynamo ONNX exporter.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[float] = (1, 1),
        fused_resample: bool = False,
        init_mode: str = "kaiming_normal",
        init_weight: float = 1,
        init_bias: float = 0,
    ) -> None:
        if up and down:
            raise ValueError("Conv2d cannot both up- and downsample")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = (
            nn.Parameter(init_tensor([out_channels, in_channels, kernel, kernel], **fans) * init_weight)
            if kernel
            else None
        )
        self.bias = nn.Parameter(init_tensor([out_channels], **fans) * init_bias) if kernel and bias else None
        # [a, a] (DDPM++'s [1, 1]): the resampling is nearest-neighbour up / 2x2 average down.
        self.box_filter = len(resample_filter) == 2 and resample_filter[0] == resample_filter[1]
        f = torch.as_tensor(list(resample_filter), dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum().square()
        self.register_buffer("resample_filter", f if (up or down) else None)

    def _depthwise(self, channels: int, scale: float, dtype: torch.dtype) -> torch.Tensor:
        f = self.resample_filter.to(dtype)
        if scale != 1:
            f = f * scale
        return f.expand(channels, 1, f.shape[-2], f.shape[-1])

    def _pooled(self, x: torch.Tensor) -> bool:
        """A box filter (always unpadded) resamples as nearest-neighbour copies / 2x2 averages."""
        return self.box_filter and (_fused_kernels(x) or _KERNELS["ort_cuda"])

    def _upsample(self, x: torch.Tensor, channels: int, pad: int) -> torch.Tensor:
        if self._pooled(x):
            return F.interpolate(x, scale_factor=2, mode="nearest")
        f = self._depthwise(channels, 4, x.dtype)
        return F.conv_transpose2d(x, f, groups=channels, stride=2, padding=pad)

    def _downsample(self, x: torch.Tensor, channels: int, pad: int) -> torch.Tensor:
        if self._pooled(x):
            return F.avg_pool2d(x, 2)
        return F.conv2d(x, self._depthwise(channels, 1, x.dtype), groups=channels, stride=2, padding=pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) if self.weight is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (self.resample_filter.shape[-1] - 1) // 2 if self.resample_filter is not None else 0
        if self.fused_resample and self.up and w is not None:
            x = self._upsample(x, self.in_channels, max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = self._downsample(x, self.out_channels, 0)
        else:
            if self.up:
                x = self._upsample(x, self.in_channels, f_pad)
            if self.down:
                x = self._downsample(x, self.in_channels, f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """GroupNorm with groups = min(num_groups, C // min_channels_per_group); statistics in fp32."""

    def __init__(
        self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fused_kernels(x):  # CUDA's kernel accumulates fp16/bf16 statistics in fp32 by itself
            return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)
        y = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return y.to(x.dtype)


# Which formulation the layers trace or run; switched only through the context managers below.
_KERNELS = {"fast": True, "ort_cuda": False}


@contextlib.contextmanager
def _kernels(**choice: bool) -> Iterator[None]:
    saved = dict(_KERNELS)
    _KERNELS.update(choice)
    try:
        yield
    finally:
        _KERNELS.update(saved)


def reference_kernels() -> contextlib.AbstractContextManager[None]:
    """Run the reference formulation even for half-precision CUDA tensors, as the official EDM code
    does: what `amed-deploy bench`'s user-compile baseline measures (a user without this project)."""
    return _kernels(fast=False)


def ort_cuda_formulation() -> contextlib.AbstractContextManager[None]:
    """Box-filter resampling as nearest Resize / 2x2 AveragePool in any dtype and on any device (the
    same values as the depthwise (transposed) convolutions, up to fp32 rounding): what the ORT-CUDA
    export traces, because ONNX Runtime's CUDA depthwise ConvTranspose is slow (docs/BENCHMARKS.md)."""
    return _kernels(ort_cuda=True)


def _fused_kernels(x: torch.Tensor) -> bool:
    """Half-precision CUDA tensors take PyTorch's fast kernels (fused GroupNorm, flash attention, and
    pooling for box-filter resampling, where cuDNN's depthwise convolutions are slow), which keep fp32
    accumulation internally. Everything else, including every ONNX
    export (traced on the CPU) and the fp32 baseline, runs the reference formulation, which spells
    the fp32 statistics out so the exported graph is safe in fp16 on any runtime."""
    return _KERNELS["fast"] and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)


def attention(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Self-attention over pixels from a [B, 3C, H, W] qkv map; returns [B, C, H, W].

    EDM interleaves q, k and v along channels (channel index mod 3 within each head), so the map is
    viewed as [B*heads, C/heads, 3, HW] and unbound on dim 2. Logits and softmax run in fp32.
    Uses bmm rather than einsum because it maps to plain MatMul in ONNX.
    """
    b, c3, h, w = qkv.shape
    c = c3 // 3
    q, k, v = qkv.reshape(b * num_heads, c // num_heads, 3, h * w).unbind(2)  # each [N, c/heads, HW]
    out = fused_attention(q, k, v) if _fused_kernels(qkv) else explicit_attention(q, k, v)
    return out.reshape(b, c, h, w)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q^T k / sqrt(d)) applied to v, logits and softmax in fp32; [N, d, L] in and out."""
    scale = 1 / math.sqrt(q.shape[1])
    logits = torch.bmm(q.float().transpose(1, 2), k.float() * scale)  # [N, Lq, Lk]
    weights = torch.softmax(logits, dim=2).to(v.dtype)
    return torch.bmm(v, weights.transpose(1, 2))  # [N, d, Lq]


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same attention through PyTorch's fused kernel (flash attention on CUDA in fp16).

    Its fused kernels need 4-D [N, heads, L, d] inputs with unit stride along d; anything else falls
    back, silently, to its math path, which computes half inputs in fp32 (docs/BENCHMARKS.md)."""
    q, k, v = (t.transpose(1, 2).unsqueeze(1).contiguous() for t in (q, k, v))  # [N, 1, L, d]
    return F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2)


class PositionalEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of a scalar per sample: output [cos, sin]."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - int(self.endpoint))
        freqs = (1 / self.max_positions) ** freqs
        x = x[:, None] * freqs.to(x.dtype)[None, :]
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features (NCSN++); the `freqs` buffer is part of the checkpoint."""

    def __init__(self, num_channels: int, scale: float = 16) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, None] * (2 * math.pi * self.freqs).to(x.dtype)[None, :]
        return torch.cat([x.cos(), x.sin()], dim=1)


class UNetBlock(nn.Module):
    """Residual block with embedding injection and optional self-attention (both U-Nets use it)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int | None = None,
        channels_per_head: int = 64,
        dropout: float = 0,
        skip_scale: float = 1,
        eps: float = 1e-5,
        resample_filter: Sequence[float] = (1, 1),
        resample_proj: bool = False,
        adaptive_scale: bool = True,
        init: dict | None = None,
        init_zero: dict | None = None,
        init_attn: dict | None = None,
    ) -> None:
        super().__init__()
        init = dict(init or {})
        init_zero = dict(init_zero) if init_zero is not None else dict(init_weight=0)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_heads = (
            0 if not attention else num_heads if num_heads is not None else out_channels // channels_per_head
        )
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale
        resample = dict(up=up, down=down, resample_filter=resample_filter)

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, **resample, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, **resample, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **(init_attn or init))
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(shift + self.norm1(x) * (scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.num_heads:
            a = attention(self.qkv(self.norm2(x)), self.num_heads)
            x = (self.proj(a) + x) * self.skip_scale
        return x


class TappableUNet(nn.Module):
    """Base of both U-Nets: bookkeeping for feature taps (named block outputs of one forward pass).

    Tap names are 'enc.<name>' / 'dec.<name>' for every non-aux entry of the encoder/decoder, e.g.
    'enc.8x8_block3'. A tap is the output of that block. Shapes are known from construction so callers
    can check a tap (e.g. that it is 8x8) before running or tracing anything.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tap_shapes: dict[str, tuple[int, int, int]] = {}

    def _add(self, part: str, name: str, module: nn.Module, channels: int, res: int) -> None:
        """Register a tappable encoder/decoder entry and remember its output shape."""
        getattr(self, part)[name] = module
        self.tap_shapes[f"{part}.{name}"] = (channels, res, res)

    def _drop_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Training only: zero each sample's class label with probability `label_dropout` (the
        subclass's setting), which teaches the unconditional model used by classifier-free guidance."""
        if self.training and self.label_dropout:
            keep = torch.rand([labels.shape[0], 1], device=labels.device) >= self.label_dropout
            labels = labels * keep.to(labels.dtype)
        return labels

    def tap_shape(self, name: str) -> tuple[int, int, int]:
        """(C, H, W) of the named tap for one sample."""
        self.check_taps((name,))
        return self.tap_shapes[name]

    def check_taps(self, taps: Iterable[str]) -> tuple[str, ...]:
        """Validate taps up front so a typo fails loudly instead of silently returning nothing."""
        taps = tuple(taps)
        unknown = [t for t in taps if t not in self.tap_shapes]
        if unknown:
            raise ValueError(f"unknown feature tap(s) {unknown}; valid names: {', '.join(self.tap_shapes)}")
        return taps
