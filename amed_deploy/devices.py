"""Device names from users (CLI --device, Sampler.load(device=...)) checked once, so a typo or a
missing GPU is one clear error instead of a torch assertion deep inside loading."""

from __future__ import annotations

import torch

from .errors import AmedError

SUPPORTED = "auto, cpu, cuda or cuda:N"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """'auto' or None -> cuda if available, else cpu; 'cpu', 'cuda', 'cuda:N' checked against this machine."""
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, TypeError, ValueError):
        raise AmedError(f"unknown device {device!r}: use {SUPPORTED}") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise AmedError(f"device {device!r} is not supported: use {SUPPORTED}")
    if not torch.cuda.is_available():
        raise AmedError(f"device {device!r} asked for, but this machine has no usable CUDA GPU: use --device cpu")
    count = torch.cuda.device_count()
    if dev.index is not None and not 0 <= dev.index < count:
        raise AmedError(f"device {device!r} does not exist: this machine has {count} CUDA GPU(s), cuda:0..{count - 1}")
    return dev
