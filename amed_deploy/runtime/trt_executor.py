"""TensorRT executor: one deserialised plan, one execution context per call batch size (EPD graphs are
also called with K times the sampling batch; each context has an optimization profile of its own, as
TensorRT requires of contexts with dynamic shapes), buffers bound once.

Thin on purpose: shapes and addresses are fixed at open(), so run() is a single enqueue on torch's
current stream (and can be captured in a CUDA graph by the caller). The TensorRT helpers it shares
with the builder live in `amed_deploy.trt_common`; TensorRT is imported lazily, so this module imports
on machines without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from ..errors import AmedError
from ..graph import dtype_name
from ..manifest import Manifest, check_manifest, manifest_path_for, read_manifest
from ..metadata import GraphSpec
from ..trt_common import (
    check_engine_io,
    engine_io,
    gpu_identity,
    import_tensorrt,
    load_engine,
    make_logger,
    trt_dtype_name,
)
from .executor import Buffers, Executor, allocate


class TRTExecutor(Executor):
    """Executor over a TensorRT plan (+ its manifest); no backend options."""

    capturable = True  # execute_async_v3 on torch's stream records into the Sampler's CUDA graph

    def __init__(
        self,
        spec: GraphSpec,
        device: torch.device,
        manifest: Manifest,
        engine: Any,
        contexts: dict[int, Any],
        buffers: dict[int, Buffers],
        runtime: Any,
        logger: Any,
    ) -> None:
        super().__init__(spec, device, buffers)
        self.manifest = manifest
        self.engine, self.contexts, self._runtime, self._logger = engine, contexts, runtime, logger

    @classmethod
    def open(
        cls,
        plan_path: str | os.PathLike,
        batch: int | None = None,
        device: torch.device | str = "cuda",
        *,
        parallel: bool = True,
    ) -> TRTExecutor:
        """Check the manifest (before touching TensorRT's deserialiser), load, bind buffers for `batch`
        (default: the profile's optimum; an EPD engine's parallel call too unless `parallel` is False)."""
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            raise AmedError(
                f"TensorRT needs a CUDA GPU (asked for {device}, CUDA available: {torch.cuda.is_available()})"
            )
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        plan_path = Path(plan_path)
        manifest = read_manifest(manifest_path_for(plan_path))
        spec = manifest.spec
        batch = spec.batch_opt if batch is None else batch
        spec.call_batches(batch, parallel)  # an EPD graph's parallel call too, before anything is loaded
        trt = import_tensorrt()
        check_manifest(plan_path, manifest, trt.__version__, *gpu_identity(device))

        logger = make_logger(trt)
        with torch.cuda.device(device):
            runtime = trt.Runtime(logger)
            engine = load_engine(plan_path.read_bytes(), runtime)
            if engine is None:
                raise AmedError(
                    f"TensorRT could not deserialise {plan_path} ({logger.last_errors()}); typical causes: a plan "
                    "from another TensorRT version or GPU, or a corrupt file: rebuild with amed-deploy build"
                )
            check_engine_io(spec, engine_io(trt, engine))
            buffers = allocate(spec, batch, device, parallel)
            if engine.num_optimization_profiles < len(buffers):
                raise AmedError(
                    f"{plan_path} has {engine.num_optimization_profiles} optimization profile(s); this graph is "
                    f"called with {len(buffers)} batch sizes and needs one each: rebuild it with amed-deploy build"
                )
            stream = torch.cuda.current_stream(device).cuda_stream
            contexts = {
                b: _context(trt, engine, logger, profile, ins, outs, stream)
                for profile, (b, (ins, outs)) in enumerate(buffers.items())
            }
        return cls(spec, device, manifest, engine, contexts, buffers, runtime, logger)

    def _execute(self, batch: int) -> None:
        """Enqueue one evaluation on torch's current stream; no host synchronisation."""
        stream = torch.cuda.current_stream(self.device).cuda_stream
        context = self.contexts[batch]
        if not context.execute_async_v3(stream):
            raise AmedError(f"TensorRT execution failed ({self._logger.last_errors()})")

    def _release(self) -> None:
        self.contexts = {}  # before the engine they were created from
        self.engine = self._runtime = None


def _context(
    trt: ModuleType,
    engine: Any,
    logger: Any,
    profile: int,
    inputs: dict[str, Tensor],
    outputs: dict[str, Tensor],
    stream: int,
) -> Any:
    """An execution context on optimization profile `profile`, its shapes and buffer addresses set."""
    context = engine.create_execution_context()
    if context is None:
        raise AmedError(f"TensorRT could not create an execution context ({logger.last_errors()}); out of GPU memory?")
    if profile and not context.set_optimization_profile_async(profile, stream):
        raise AmedError(f"TensorRT refused optimization profile {profile} ({logger.last_errors()})")
    for name, t in inputs.items():
        if not context.set_input_shape(name, tuple(t.shape)):
            raise AmedError(f"TensorRT refused shape {tuple(t.shape)} for {name!r} ({logger.last_errors()})")
    for name, t in {**inputs, **outputs}.items():
        _check_buffer(trt, engine, context, name, t)
        if not context.set_tensor_address(name, t.data_ptr()):
            raise AmedError(f"TensorRT refused the buffer address of {name!r} ({logger.last_errors()})")
    return context


def _check_buffer(trt: ModuleType, engine: Any, context: Any, name: str, t: Tensor) -> None:
    """The preallocated buffer must have exactly the engine's dtype and (resolved) shape."""
    dtype = trt_dtype_name(trt, engine.get_tensor_dtype(name))
    if dtype != dtype_name(t.dtype):
        raise AmedError(f"engine tensor {name!r} is {dtype}, buffer is {t.dtype}")
    shape = tuple(int(d) for d in context.get_tensor_shape(name))
    if shape != tuple(t.shape):
        raise AmedError(f"engine tensor {name!r} has shape {shape} for this batch, buffer has {tuple(t.shape)}")
