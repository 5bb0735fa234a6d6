"""The contract between the sampler loop and a backend (TensorRT, ONNX Runtime, PyTorch).

An executor owns preallocated input and output buffers for one batch size and evaluates the graph
on them. The loop writes into `inputs`, calls `run()`, and reads `outputs`; nothing is allocated per
call. On CUDA, `run()` is enqueued on torch's current stream so torch ops and the backend stay
ordered without host synchronisation (which also makes whole-loop CUDA-graph capture possible).
"""

from __future__ import annotations

import threading
from typing import Protocol

import torch
from torch import Tensor

from ..amed_network import IMAGE_DTYPES
from ..metadata import GraphSpec

# Graph I/O names, fixed by the exporter.
X, SIGMA, SIGMA_NEXT, LABELS = "x", "sigma", "sigma_next", "class_labels"
DENOISED, R, C, A = "denoised", "r", "c", "a"
PREDICTOR_OUTPUTS = (R, C, A)

# Held while a backend records a CUDA graph or makes its first, algorithm-choosing calls. Both use
# CUDA stream capture (ORT and cuDNN do so internally), which fails when another thread's setup calls
# land during it: seen with 8 Samplers of one kind starting in 8 threads (PyTorch and ORT alike).
CUDA_SETUP_LOCK = threading.Lock()


class Executor(Protocol):
    spec: GraphSpec
    device: torch.device
    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]
    capturable: bool  # run() may be recorded into a CUDA graph by the caller (not ORT: it has its own)

    def run(self) -> None:
        """Evaluate the graph on the current input buffers, writing the output buffers."""
        ...


def io_shapes(spec: GraphSpec, batch: int) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Input and output shapes of a graph for one batch size."""
    c, h, w = spec.image_shape
    inputs: dict[str, tuple[int, ...]] = {X: (batch, c, h, w), SIGMA: (batch,), SIGMA_NEXT: (batch,)}
    if spec.conditional:
        inputs[LABELS] = (batch, spec.label_dim)
    outputs: dict[str, tuple[int, ...]] = {DENOISED: (batch, c, h, w)}
    if spec.kind == "amed":
        outputs.update({name: (batch, 1, 1, 1) for name in PREDICTOR_OUTPUTS})
    return inputs, outputs


def image_dtype(spec: GraphSpec) -> torch.dtype:
    """x and denoised carry the graph's precision; sigmas, labels and r, c, a are always fp32."""
    return IMAGE_DTYPES[spec.precision]


def allocate(spec: GraphSpec, batch: int, device: torch.device) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Preallocate every I/O buffer of a graph for `batch` on `device`, after checking that the batch is
    in the graph's range and that it fits in the device's memory (an OOM kill says nothing)."""
    from .memory import check_fits  # memory imports this module

    spec.check_batch(batch)
    check_fits(spec, batch, device)
    ins, outs = io_shapes(spec, batch)
    img = image_dtype(spec)

    def make(shapes: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
        return {
            name: torch.zeros(shape, dtype=img if name in (X, DENOISED) else torch.float32, device=device)
            for name, shape in shapes.items()
        }

    return make(ins), make(outs)
