"""SongUNet: the DDPM++ / NCSN++ U-Net of EDM's CIFAR-10, FFHQ and AFHQv2 checkpoints.

Written from the architecture described in the EDM paper (Karras et al., 2022); module names, shapes and order match
the official state dicts so released weights load by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Conv2d, FourierEmbedding, GroupNorm, Linear, PositionalEmbedding, TappableUNet, UNetBlock

__all__ = ["SongUNet"]

_EMBEDDINGS = ("positional", "fourier")
_ENCODERS = ("standard", "skip", "residual")
_DECODERS = ("standard", "skip")


class SongUNet(TappableUNet):
    """DDPM++ (positional, standard/standard, [1,1]) or NCSN++ (fourier, residual/skip, [1,3,3,1])."""

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[float] = (1, 1),
    ) -> None:
        for value, allowed, what in (
            (embedding_type, _EMBEDDINGS, "embedding_type"),
            (encoder_type, _ENCODERS, "encoder_type"),
            (decoder_type, _DECODERS, "decoder_type"),
        ):
            if value not in allowed:
                raise ValueError(f"SongUNet: {what} must be one of {allowed}, got {value!r}")
        super().__init__()
        self.img_resolution = img_resolution
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        block_kwargs = dict(
            emb_channels=emb_channels,
            num_heads=1,
            dropout=dropout,
            skip_scale=math.sqrt(0.5),
            eps=1e-6,
            resample_filter=resample_filter,
            resample_proj=True,
            adaptive_scale=False,
            init=init,
            init_zero=init_zero,
            init_attn=init_attn,
        )

        # Mapping network (registration order = official state-dict order).
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Encoder.
        self.enc = nn.ModuleDict()
        cout = in_channels
        caux = in_channels
        skips: list[int] = []
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self._add("enc", f"{res}x{res}_conv", Conv2d(cin, cout, kernel=3, **init), cout, res)
                skips.append(cout)
            else:
                self._add("enc", f"{res}x{res}_down", UNetBlock(cout, cout, down=True, **block_kwargs), cout, res)
                skips.append(cout)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(
                        caux, caux, kernel=0, down=True, resample_filter=resample_filter
                    )
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux,
                        cout,
                        kernel=3,
                        down=True,
                        resample_filter=resample_filter,
                        fused_resample=True,
                        **init,
                    )
                    caux = cout
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
                attn = idx == num_blocks and res in attn_resolutions
                block = UNetBlock(cin, cout, attention=attn, **block_kwargs)
                self._add("dec", f"{res}x{res}_block{idx}", block, cout, res)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(
                        out_channels, out_channels, kernel=0, up=True, resample_filter=resample_filter
                    )
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, kernel=3, **init_zero)

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
        half = emb.shape[1] // 2
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=1)  # swap sin/cos halves, as trained
        if self.map_label is not None:
            labels = self._drop_labels(class_labels)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        emb = F.silu(self.map_layer1(emb))

        skips: list[torch.Tensor] = []
        aux = x
        for name, block in self.enc.items():
            if name.endswith("_aux_down"):
                aux = block(aux)
            elif name.endswith("_aux_skip"):
                x = skips[-1] = x + block(aux)
            elif name.endswith("_aux_residual"):
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)
                if f"enc.{name}" in taps:
                    feats[f"enc.{name}"] = x

        out = None
        tmp = None
        for name, block in self.dec.items():
            if name.endswith("_aux_up"):
                out = block(out)
            elif name.endswith("_aux_norm"):
                tmp = block(x)
            elif name.endswith("_aux_conv"):
                tmp = block(F.silu(tmp))
                out = tmp if out is None else tmp + out
            else:
                if "_block" in name:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
                if f"dec.{name}" in taps:
                    feats[f"dec.{name}"] = x

        if not taps:
            return out
        return out, tuple(feats[t] for t in taps)
