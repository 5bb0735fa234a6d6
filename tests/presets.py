"""Tiny network configurations for tests: every block type of each U-Net, fast on a CPU."""

from __future__ import annotations

from typing import Any

# The configuration of tests/data/tiny-ddpmpp.keys.tsv (EDMPrecond kwargs); fast on a CPU.
TINY_SONGUNET_KWARGS: dict[str, Any] = dict(
    img_resolution=16,
    img_channels=3,
    label_dim=10,
    model_type="SongUNet",
    model_channels=32,
    channel_mult=[1, 2],
    num_blocks=1,
    attn_resolutions=[8],
    augment_dim=9,
    embedding_type="positional",
    encoder_type="standard",
    decoder_type="standard",
    channel_mult_noise=1,
    resample_filter=[1, 1],
)

# Tiny NCSN++ (fourier embedding, residual encoder, skip decoder, [1,3,3,1] filter), for VE tests.
TINY_NCSNPP_KWARGS: dict[str, Any] = dict(
    TINY_SONGUNET_KWARGS,
    embedding_type="fourier",
    encoder_type="residual",
    decoder_type="skip",
    channel_mult_noise=2,
    resample_filter=[1, 3, 3, 1],
)

# Tiny ADM: 64 channels at 8x8 gives one 64-channel attention head there.
TINY_ADM_KWARGS: dict[str, Any] = dict(
    img_resolution=16,
    img_channels=3,
    label_dim=10,
    model_type="DhariwalUNet",
    model_channels=32,
    channel_mult=[1, 2],
    num_blocks=1,
    attn_resolutions=[8],
)
