"""Seeded starting noise and class labels, drawn on the CPU so every executor (PyTorch, ONNX Runtime,
TensorRT, any device) samples from exactly the same inputs for the same seed.

Seeds and labels are checked strictly: a float or a bool is refused rather than truncated (1.9 would
silently become seed 1), while numpy and torch integer scalars are accepted like Python ints."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import AmedError

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 0..2^64-1


def as_int(value: Any, what: str) -> int:
    """An integer from a Python, numpy or torch integer scalar; floats, bools and strings are refused."""
    if isinstance(value, (bool, np.bool_)):
        raise AmedError(f"{what} must be an integer, got the boolean {value!r}")
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
            raise AmedError(f"{what} must be an integer, got a {value.dtype} tensor of shape {tuple(value.shape)}")
        value = value.item()
    try:
        return operator.index(value)
    except TypeError:
        raise AmedError(f"{what} must be an integer, got {value!r} ({type(value).__name__})") from None


def check_seed(seed: Any) -> int:
    s = as_int(seed, "seed")
    if not 0 <= s <= MAX_SEED:
        raise AmedError(f"seed {s} is out of range: seeds are 0..2^64-1")
    return s


def class_list(classes: Any, batch: int, label_dim: int) -> list[int] | None:
    """None (random), one class for the whole batch, or one per sample; each checked against label_dim."""
    if classes is None:
        return None
    if label_dim == 0:
        raise AmedError("this model is unconditional: it takes no class labels")
    if isinstance(classes, (str, bytes)):
        raise AmedError(f"class labels must be integers, got the string {classes!r}")
    scalar = isinstance(classes, (Tensor, np.ndarray)) and classes.ndim == 0
    if scalar or not isinstance(classes, (Sequence, Tensor, np.ndarray)):
        labels = [as_int(classes, "class label")] * batch
    else:
        labels = [as_int(c, "class label") for c in classes]
        if len(labels) != batch:
            raise AmedError(f"got {len(labels)} class labels for a batch of {batch}")
    bad = [c for c in labels if not 0 <= c < label_dim]
    if bad:
        raise AmedError(f"class label {bad[0]} is out of range: this model has classes 0..{label_dim - 1}")
    return labels


def make_inputs(
    seed: int, batch: int, image_shape: Sequence[int], label_dim: int, classes: int | Sequence[int] | None = None
) -> tuple[Tensor, Tensor | None]:
    """Standard-normal noise [B,C,H,W] and one-hot labels [B,L] (None when unconditional).

    `classes`: None draws random classes from the same generator; an int repeats one class; a
    sequence gives one class per sample."""
    batch = as_int(batch, "batch")
    if batch < 1:
        raise AmedError(f"batch must be >= 1, got {batch}")
    labels = class_list(classes, batch, label_dim)
    gen = torch.Generator().manual_seed(check_seed(seed))
    noise = torch.randn((batch, *image_shape), generator=gen, dtype=torch.float32)
    if label_dim == 0:
        return noise, None
    idx = torch.randint(label_dim, (batch,), generator=gen) if labels is None else torch.tensor(labels)
    return noise, torch.nn.functional.one_hot(idx, label_dim).to(torch.float32)


def start_state(
    noise: Tensor, labels: Tensor | None, sigma: float, device: torch.device | str
) -> tuple[Tensor, Tensor | None]:
    """The solver's starting x (unit noise scaled to the first time) and the labels, both on `device`."""
    return noise.to(device) * sigma, None if labels is None else labels.to(device)
