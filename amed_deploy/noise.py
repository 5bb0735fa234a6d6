"""Seeded starting noise and class labels, drawn on the CPU so every executor (PyTorch, ONNX Runtime,
TensorRT, any device) samples from exactly the same inputs for the same seed."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import AmedError


def make_inputs(
    seed: int, batch: int, image_shape: Sequence[int], label_dim: int, classes: int | Sequence[int] | None = None
) -> tuple[Tensor, Tensor | None]:
    """Standard-normal noise [B,C,H,W] and one-hot labels [B,L] (None when unconditional).

    `classes`: None draws random classes from the same generator; an int repeats one class; a
    sequence gives one class per sample."""
    if batch < 1:
        raise AmedError(f"batch must be >= 1, got {batch}")
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((batch, *image_shape), generator=gen, dtype=torch.float32)
    if label_dim == 0:
        if classes is not None:
            raise AmedError("this model is unconditional: it takes no class labels")
        return noise, None
    if classes is None:
        idx = torch.randint(label_dim, (batch,), generator=gen)
    else:
        idx = torch.as_tensor([classes] * batch if isinstance(classes, int) else list(classes), dtype=torch.long)
        if idx.shape != (batch,):
            raise AmedError(f"got {idx.numel()} class labels for a batch of {batch}")
        bad = [int(c) for c in idx if not 0 <= int(c) < label_dim]
        if bad:
            raise AmedError(f"class label {bad[0]} is out of range: this model has classes 0..{label_dim - 1}")
    return noise, torch.nn.functional.one_hot(idx, label_dim).to(torch.float32)
