"""Seeded starting noise and class labels: one seed per image, as EDM's generate.py draws them (its
StackedRandomGenerator: a generator per image, noise then the random class), so image s is the same
whatever batch, position, device or process draws it. Unlike EDM (which draws on the sampling device),
the draws are made on the CPU, so every executor (PyTorch, ONNX Runtime, TensorRT, any device) samples
from exactly the same inputs. A call's single seed S is the per-image seeds S, S+1, ..., S+B-1.

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
MAX_SEEDS = 10**8  # seeds one --seeds list may name (a list of them is held in memory)


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


def class_list(classes: Any, batch: int, label_dim: int) -> list[int | None] | None:
    """None (random), one class for the whole batch, or one per sample (None: that sample's is random);
    each checked against label_dim."""
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
        labels = [None if c is None else as_int(c, "class label") for c in classes]
        if len(labels) != batch:
            raise AmedError(f"got {len(labels)} class labels for a batch of {batch}")
    bad = [c for c in labels if c is not None and not 0 <= c < label_dim]
    if bad:
        raise AmedError(f"class label {bad[0]} is out of range: this model has classes 0..{label_dim - 1}")
    return labels


def seed_range(seed: Any, count: int) -> list[int]:
    """The per-image seeds of a call given one seed: seed, seed+1, ..., seed+count-1."""
    first = check_seed(seed)
    if first + count - 1 > MAX_SEED:
        raise AmedError(f"seeds {first}..{first + count - 1} go past 2^64-1")
    return list(range(first, first + count))


def parse_seeds(text: str) -> list[int]:
    """'0-63' or '1,5,10-19' -> the seeds, in order (EDM's --seeds syntax); each seed at most once."""
    seeds: list[int] = []
    for part in text.replace(" ", "").split(","):
        lo, dash, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi if dash else lo)
        except ValueError:
            raise AmedError(f"seeds are N, N-M or a comma-separated list of those, got {text!r}") from None
        if last < first:
            raise AmedError(f"seed range {part} is empty (write the smaller seed first)")
        if last - first + len(seeds) >= MAX_SEEDS:
            raise AmedError(f"seeds {text!r} name more than {MAX_SEEDS:,} images")
        seeds.extend(range(check_seed(first), check_seed(last) + 1))
    if len(set(seeds)) != len(seeds):
        raise AmedError(f"seeds {text!r} name a seed twice")
    return seeds


def seed_batches(seeds: Sequence[int], batch: int) -> list[list[int]]:
    """The seeds in calls of at most `batch` images, in order (the last call may be smaller)."""
    if batch < 1:
        raise AmedError(f"batch must be >= 1, got {batch}")
    seeds = list(seeds)
    return [seeds[i : i + batch] for i in range(0, len(seeds), batch)]


def make_inputs(
    seeds: Sequence[int], image_shape: Sequence[int], label_dim: int, classes: int | Sequence[int] | None = None
) -> tuple[Tensor, Tensor | None]:
    """Standard-normal noise [B,C,H,W] and one-hot labels [B,L] (None when unconditional), image i from
    its own generator seeded with seeds[i].

    `classes`: None draws each image's class from its generator, after its noise; an int repeats one
    class; a sequence gives one class per image (None: drawn from its seed)."""
    seeds = [check_seed(s) for s in seeds]
    if not seeds:
        raise AmedError("no seeds: need at least one image")
    labels = class_list(classes, len(seeds), label_dim) or [None] * len(seeds)
    noise = torch.empty((len(seeds), *image_shape), dtype=torch.float32)
    gen = torch.Generator()  # reseeded per image: the same draws as a new generator, at half the cost
    for i, seed in enumerate(seeds):
        gen.manual_seed(seed)
        torch.randn(tuple(image_shape), generator=gen, out=noise[i])
        if label_dim and labels[i] is None:
            labels[i] = int(torch.randint(label_dim, (1,), generator=gen))
    if label_dim == 0:
        return noise, None
    idx = torch.tensor(labels)
    return noise, torch.nn.functional.one_hot(idx, label_dim).to(torch.float32)


def start_state(
    noise: Tensor, labels: Tensor | None, sigma: float, device: torch.device | str
) -> tuple[Tensor, Tensor | None]:
    """The solver's starting x (unit noise scaled to the first time) and the labels, both on `device`."""
    return noise.to(device) * sigma, None if labels is None else labels.to(device)
