"""DhariwalUNet: the ADM U-Net of EDM's ImageNet-64 checkpoint.

Written from the architecture described in the EDM paper (Karras et al., 2022); module names, shapes and order match
the official state dicts so released weights load by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Conv2d, GroupNorm, Linear, PositionalEmbedding, TappableUNet, UNetBlock

__all__ = ["DhariwalUNet"]


class DhariwalUNet(TappableUNet):
    """ADM: adaptive-scale blocks, 64 channels per attention head, labels added after map_layer1."""

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (32, 16, 8),
        dropout: float = 0.10,
        label_dropout: float = 0,
    ) -> None:
        super().__init__()
        self.img_resolution = img_resolution
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        block_kwargs = dict(
            emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero
        )

        # Mapping network (registration order = official state-dict order).
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = (
            Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal", init_weight=math.sqrt(label_dim))
            if label_dim
            else None
        )

        # Encoder.
        self.enc = nn.ModuleDict()
        cout = in_channels
        skips: list[int] = []
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self._add("enc", f"{res}x{res}_conv", Conv2d(cin, cout, kernel=3, **init), cout, res)
            else:
                self._add("enc", f"{res}x{res}_down", UNetBlock(cout, cout, down=True, **block_kwargs), cout, res)
            skips.append(cout)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                block = UNetBlock(cin, cout, attention=res in attn_resolutions, **block_kwargs)
                self._add("enc", f"{res}x{res}_block{idx}", block, cout, res)
                skips.append(cout)

        # Decoder.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self._add("dec", f"{res}x{res}_in0", UNetBlock(cout, cout, attention=True, **block_kwargs), cout, res)
                self._add("dec", f"{res}x{res}_in1", UNetBlock(cout, cout, **block_kwargs), cout, res)
            else:
                self._add("dec", f"{res}x{res}_up", UNetBlock(cout, cout, up=True, **block_kwargs), cout, res)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                block = UNetBlock(cin, cout, attention=res in attn_resolutions, **block_kwargs)
                self._add("dec", f"{res}x{res}_block{idx}", block, cout, res)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None,
        augment_labels: torch.Tensor | None = None,
        taps: Sequence[str] = (),
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """F(x, c_noise); with taps, also the named block outputs of this same pass."""
        taps = self.check_taps(taps)
        feats: dict[str, torch.Tensor] = {}

        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            labels = self._drop_labels(class_labels)
            emb = emb + self.map_label(labels)
        emb = F.silu(emb)

        skips: list[torch.Tensor] = []
        for name, block in self.enc.items():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
            if f"enc.{name}" in taps:
                feats[f"enc.{name}"] = x
        for name, block in self.dec.items():
            if "_block" in name:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
            if f"dec.{name}" in taps:
                feats[f"dec.{name}"] = x
        out = self.out_conv(F.silu(self.out_norm(x)))

        if not taps:
            return out
        return out, tuple(feats[t] for t in taps)
