"""The inputs every measurement draws, so FID, RMSE and PCA of a cell see the same noise and labels.

Sample i of a run uses seed seed0 + i (one seed per image, drawn on the CPU by `noise.make_inputs`, so
every device and batch size sees the same inputs) and class labels cycle 0, 1, ..., L-1 over the sample
index, so every class is equally represented.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..amed_network import AMEDNetwork
from ..errors import AmedError
from ..networks import image_shape
from ..noise import make_inputs, seed_range


def batch_slices(n: int, batch: int) -> list[tuple[int, int]]:
    """(start, size) of each batch of n samples."""
    if n < 1 or batch < 1:
        raise AmedError(f"need n >= 1 and batch >= 1, got n={n}, batch={batch}")
    return [(start, min(batch, n - start)) for start in range(0, n, batch)]


def batch_classes(label_dim: int, start: int, size: int, classes: str | int | None) -> int | list[int] | None:
    """Labels of samples start..start+size: 'uniform' cycles 0..L-1 over the global index."""
    if label_dim == 0:
        return None
    if classes == "uniform":
        return [(start + k) % label_dim for k in range(size)]
    if classes in (None, "random"):
        return None
    return int(classes)


def batch_inputs(
    network: AMEDNetwork, seed0: int, start: int, size: int, classes: str | int | None, device: torch.device | str
) -> tuple[Tensor, Tensor | None]:
    """Unit noise and one-hot labels of samples start..start+size of a run, exactly as `reference_sample`
    draws them."""
    shape = image_shape(network.net)
    labels = batch_classes(network.label_dim, start, size, classes)
    noise, onehot = make_inputs(seed_range(seed0 + start, size), shape, network.label_dim, labels)
    return noise.to(device), None if onehot is None else onehot.to(device)
