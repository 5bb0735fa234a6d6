"""The summary `amed-deploy info` prints for a checkpoint. The preconditioners' defaults and noise
ranges come from the network implementations (:mod:`amed_deploy.networks.precond`), so the summary
cannot drift from what the network would be built with."""

from __future__ import annotations

from typing import Any

import torch

from amed_deploy.checkpoint.format import Checkpoint
from amed_deploy.networks import NETWORK_CLASSES

__all__ = ["describe_checkpoint"]

_KEY_KWARGS = (
    "model_channels",
    "channel_mult",
    "num_blocks",
    "attn_resolutions",
    "channel_mult_emb",
    "augment_dim",
    "dropout",
    "embedding_type",
    "encoder_type",
    "decoder_type",
    "channel_mult_noise",
    "resample_filter",
    "use_fp16",
)


def _noise_range(
    cls: type | None, kw: dict[str, Any], state_dict: dict[str, torch.Tensor]
) -> tuple[float | None, float | None]:
    """The network's sigma range, or (None, None) for an unknown class or kwargs that do not give one."""
    if cls is None:
        return None, None
    try:
        return cls.noise_range(kw, state_dict)
    except (KeyError, TypeError, ValueError, IndexError, OverflowError):
        return None, None


def describe_checkpoint(ckpt: Checkpoint) -> dict[str, Any]:
    """A summary for humans: architecture, size, noise range, conditioning, image shape, provenance."""
    cls = NETWORK_CLASSES.get(ckpt.network_class)
    kw = {**(cls.own_defaults() if cls is not None else {}), **ckpt.network_kwargs}
    model_type = kw.get("model_type") or (ckpt.metadata.get("edm") or {}).get("model_class")
    if model_type == "SongUNet":
        flavour = "NCSN++" if kw.get("embedding_type") == "fourier" else "DDPM++"
    elif model_type == "DhariwalUNet":
        flavour = "ADM"
    else:
        flavour = None
    sigma_min, sigma_max = _noise_range(cls, kw, ckpt.state_dict)
    res, ch = kw.get("img_resolution"), kw.get("img_channels")
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in ckpt.state_dict.values()})
    return {
        "network_class": ckpt.network_class,
        "model_type": model_type,
        "architecture": flavour,
        "parameters": ckpt.num_parameters(),
        "parameters_exclude_buffers": "buffer_keys" in ckpt.metadata,
        "tensors": len(ckpt.state_dict),
        "dtypes": dtypes,
        "image_shape": [ch, res, res] if res is not None and ch is not None else None,
        "label_dim": kw.get("label_dim", 0),
        "sigma_min": sigma_min,
        "sigma_max": sigma_max,
        "sigma_data": kw.get("sigma_data"),
        "kwargs": {k: kw[k] for k in _KEY_KWARGS if k in kw},
        "metadata": ckpt.metadata,
    }
