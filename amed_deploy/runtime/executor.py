"""The contract between the sampler loop and a backend (TensorRT, ONNX Runtime, PyTorch).

Every executor has one shape, as Polygraphy separates loading from running: `open(source, batch,
device, **backend_options)` loads (deserialises, builds a session or a module), checks the result
against the graph contract and binds preallocated buffers for one batch size; `run()` evaluates the
graph on those buffers; `close()` releases the backend and the buffers. The loop writes into `inputs`,
calls `run()`, and reads `outputs`; nothing is allocated per call. On CUDA, `run()` is enqueued on
torch's current stream so torch ops and the backend stay ordered without host synchronisation (which
also makes whole-loop CUDA-graph capture possible).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import AmedError
from ..graph import io_dtype, io_shapes
from ..memory import check_fits
from ..metadata import GraphSpec

# Held while a backend records a CUDA graph or makes its first, algorithm-choosing calls. Both use
# CUDA stream capture (ORT and cuDNN do so internally), which fails when another thread's setup calls
# land during it: seen with 8 Samplers of one kind starting in 8 threads (PyTorch and ORT alike).
CUDA_SETUP_LOCK = threading.Lock()


class Executor(ABC):
    """One graph on one backend, with its I/O buffers for one batch size (see the module docstring)."""

    capturable: ClassVar[bool]  # run() may be recorded into a CUDA graph by the caller (not ORT: it has its own)

    def __init__(self, spec: GraphSpec, device: torch.device, inputs: dict[str, Tensor], outputs: dict[str, Tensor]):
        """Takes what `open` loaded and bound; use `open`."""
        self.spec, self.device = spec, device
        self.inputs, self.outputs = inputs, outputs
        self._closed = False

    @classmethod
    @abstractmethod
    def open(cls, source: Any, batch: int | None, device: torch.device | str, **backend_options: Any) -> Executor:
        """Load `source` for `batch` (None: the graph's optimum) on `device`; refuse what does not fit."""

    def run(self) -> None:
        """Evaluate the graph on the current input buffers, writing the output buffers."""
        if self._closed:
            raise AmedError(f"this {type(self).__name__} is closed: open the graph again")
        self._execute()

    @abstractmethod
    def _execute(self) -> None: ...

    def close(self) -> None:
        """Release the backend's objects and the buffers now rather than at garbage collection."""
        self._closed = True
        self._release()
        self.inputs, self.outputs = {}, {}

    @abstractmethod
    def _release(self) -> None: ...

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def allocate(spec: GraphSpec, batch: int, device: torch.device) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Preallocate every I/O buffer of a graph for `batch` on `device`, after checking that the batch is
    in the graph's range and that it fits in the device's memory (an OOM kill says nothing)."""
    spec.check_batch(batch)
    check_fits(spec, batch, device)
    ins, outs = io_shapes(spec, batch)

    def make(shapes: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
        return {name: torch.zeros(shape, dtype=io_dtype(spec, name), device=device) for name, shape in shapes.items()}

    return make(ins), make(outs)
