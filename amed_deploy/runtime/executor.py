"""The contract between the sampler loop and a backend (TensorRT, ONNX Runtime, PyTorch).

Every executor has one shape, as Polygraphy separates loading from running: `open(source, batch,
device, **backend_options)` loads (deserialises, builds a session or a module), checks the result
against the graph contract and binds preallocated buffers for one batch size; `run()` evaluates the
graph on those buffers; `close()` releases the backend and the buffers. The loop writes into `inputs`,
calls `run()`, and reads `outputs`; nothing is allocated per call. An EPD graph is also called with K
times the sampling batch (its parallel points): `buffers` then holds a second set for that batch size,
run with `run(batch)`, bound once like the first (GraphSpec.call_batches; `open(..., parallel=False)` binds
only the first, for a sampler that makes no parallel call). On CUDA, `run()` evaluates the
inputs as torch's current stream last wrote them and leaves outputs that torch's later work sees complete:
PyTorch and TensorRT enqueue on that stream, without host synchronisation (which also makes whole-loop
CUDA-graph capture possible); ONNX Runtime runs on a stream of its own, so its `run()` waits for torch's
pending work first (and ORT returns once its own work is done).
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
Buffers = tuple[dict[str, Tensor], dict[str, Tensor]]  # (inputs, outputs) of one batch size, by graph name


class Executor(ABC):
    """One graph on one backend, with its I/O buffers for one batch size (see the module docstring)."""

    capturable: ClassVar[bool]  # run() may be recorded into a CUDA graph by the caller (not ORT: it has its own)

    def __init__(self, spec: GraphSpec, device: torch.device, buffers: dict[int, Buffers]):
        """Takes what `open` loaded and bound; use `open`. `buffers` maps each call batch size to its
        (inputs, outputs), the sampling batch first."""
        self.spec, self.device = spec, device
        self.buffers = buffers
        self.batch = next(iter(buffers))
        self.inputs, self.outputs = buffers[self.batch]
        self._closed = False

    @classmethod
    @abstractmethod
    def open(cls, source: Any, batch: int | None, device: torch.device | str, **backend_options: Any) -> Executor:
        """Load `source` for `batch` (None: the graph's optimum) on `device`; refuse what does not fit."""

    def run(self, batch: int | None = None) -> None:
        """Evaluate the graph on the input buffers of `batch` (default: the sampling batch), writing
        that batch's output buffers."""
        if self._closed:
            raise AmedError(f"this {type(self).__name__} is closed: open the graph again")
        batch = self.batch if batch is None else batch
        if batch not in self.buffers:
            raise AmedError(f"this executor has no buffers for batch {batch} (it has {sorted(self.buffers)})")
        self._execute(batch)

    @abstractmethod
    def _execute(self, batch: int) -> None: ...

    def close(self) -> None:
        """Release the backend's objects and the buffers now rather than at garbage collection."""
        self._closed = True
        self._release()
        self.buffers, self.inputs, self.outputs = {}, {}, {}

    @abstractmethod
    def _release(self) -> None: ...

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def allocate(spec: GraphSpec, batch: int, device: torch.device, parallel: bool = True) -> dict[int, Buffers]:
    """Preallocate every I/O buffer of a graph for a sampling batch of `batch` on `device` (and, for EPD
    with `parallel`, for its K*batch parallel call), after checking that the batches are in the graph's
    range and that they fit in the device's memory (an OOM kill says nothing)."""
    batches = spec.call_batches(batch, parallel)
    check_fits(spec, sum(batches), device)

    def make(shapes: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
        return {name: torch.zeros(shape, dtype=io_dtype(spec, name), device=device) for name, shape in shapes.items()}

    return {b: tuple(make(shapes) for shapes in io_shapes(spec, b)) for b in batches}
