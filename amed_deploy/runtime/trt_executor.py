"""TensorRT executor: one deserialised plan, one execution context, buffers bound once.

Thin on purpose: shapes and addresses are fixed at open(), so run() is a single enqueue on torch's
current stream (and can be captured in a CUDA graph by the caller). Also holds the small TensorRT
helpers shared with the builder (import with an install hint, logger that keeps errors, dtype names).
TensorRT is imported lazily, so this module imports on machines without it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from ..errors import AmedError
from ..metadata import GraphSpec
from .executor import allocate
from .manifest import Manifest, check_engine_io, check_manifest, manifest_path_for, read_manifest

INSTALL_HINT = (
    "install it with `pip install 'amed-deploy[tensorrt]'` (or `pip install tensorrt-cu13`) "
    "on a machine that can reach NVIDIA's package index"
)
# TensorRT DataType member name -> dtype name used in manifests (== torch dtype attribute name).
_TRT_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
    "FP8": "float8_e4m3fn",
}


def import_tensorrt() -> ModuleType:
    """Import TensorRT (10 or newer), or raise one AmedError line saying how to install it."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:
        raise AmedError(f"TensorRT is not installed ({type(e).__name__}: {e}); {INSTALL_HINT}") from None
    if trt_major(trt) < 10:
        raise AmedError(
            f"TensorRT {trt.__version__} is too old: amed-deploy needs TensorRT 10 or newer; {INSTALL_HINT}"
        )
    return trt


def trt_major(trt: ModuleType) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        return 0


def make_logger(trt: ModuleType, verbose: bool = False) -> Any:
    """A TensorRT logger that prints warnings to stderr and keeps error lines for our messages."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)
            if level <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
            if level <= int(trt.ILogger.Severity.WARNING) or verbose:
                print(f"[TensorRT] {msg}", file=sys.stderr)

        def last_errors(self, n: int = 3) -> str:
            return "; ".join(self.errors[-n:]) if self.errors else "no error was logged"

    return _Logger()


def dtype_name(trt: ModuleType, dt: Any) -> str:
    """Manifest dtype string of a TensorRT DataType (own map: trt.nptype has no bfloat16)."""
    for member, name in _TRT_DTYPES.items():
        if getattr(trt.DataType, member, None) == dt:
            return name
    return str(dt).rsplit(".", 1)[-1].lower()


def engine_io(trt: ModuleType, engine: Any) -> list[dict]:
    """Name, direction, dtype and (possibly dynamic, -1) shape of every I/O tensor of an engine."""
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        dtype = dtype_name(trt, engine.get_tensor_dtype(name))
        out.append(
            {"name": name, "mode": mode, "dtype": dtype, "shape": [int(d) for d in engine.get_tensor_shape(name)]}
        )
    return out


def load_engine(plan: bytes, runtime: Any) -> Any:
    """Deserialise through Polygraphy's loader (which also allows the lean runtime that
    version-compatible plans embed); None when TensorRT refuses the plan."""
    from polygraphy.backend.trt import engine_from_bytes
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):  # our message says it, with TensorRT's own errors
        try:
            return engine_from_bytes(plan, runtime=runtime)
        except PolygraphyException:
            return None


def gpu_identity(device: torch.device) -> tuple[str, str]:
    """(name, 'major.minor') of a CUDA device, as recorded in and checked against manifests."""
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"{major}.{minor}"


class TRTExecutor:
    """Executor over a TensorRT plan; see runtime.executor.Executor."""

    capturable = True  # execute_async_v3 on torch's stream records into the Sampler's CUDA graph

    def __init__(
        self,
        spec: GraphSpec,
        device: torch.device,
        manifest: Manifest,
        engine: Any,
        context: Any,
        inputs: dict[str, Tensor],
        outputs: dict[str, Tensor],
        runtime: Any,
        logger: Any,
    ) -> None:
        self.spec, self.device, self.manifest = spec, device, manifest
        self.engine, self.context, self._runtime, self._logger = engine, context, runtime, logger
        self.inputs, self.outputs = inputs, outputs

    @classmethod
    def open(cls, plan_path: str | os.PathLike, batch: int | None, device: torch.device | str = "cuda") -> TRTExecutor:
        """Check the manifest (before touching TensorRT's deserialiser), load, bind buffers for `batch`
        (default: the profile's optimum)."""
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
        spec.check_batch(batch)
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
            context = engine.create_execution_context()
            if context is None:
                raise AmedError(
                    f"TensorRT could not create an execution context ({logger.last_errors()}); out of GPU memory?"
                )
            inputs, outputs = allocate(spec, batch, device)
            for name, t in inputs.items():
                if not context.set_input_shape(name, tuple(t.shape)):
                    raise AmedError(f"TensorRT refused shape {tuple(t.shape)} for {name!r} ({logger.last_errors()})")
            for name, t in {**inputs, **outputs}.items():
                _check_buffer(trt, engine, context, name, t)
                if not context.set_tensor_address(name, t.data_ptr()):
                    raise AmedError(f"TensorRT refused the buffer address of {name!r} ({logger.last_errors()})")
        return cls(spec, device, manifest, engine, context, inputs, outputs, runtime, logger)

    def run(self) -> None:
        """Enqueue one evaluation on torch's current stream; no host synchronisation."""
        stream = torch.cuda.current_stream(self.device).cuda_stream
        if not self.context.execute_async_v3(stream):
            raise AmedError(f"TensorRT execution failed ({self._logger.last_errors()})")


def _check_buffer(trt: ModuleType, engine: Any, context: Any, name: str, t: Tensor) -> None:
    """The preallocated buffer must have exactly the engine's dtype and (resolved) shape."""
    dtype = dtype_name(trt, engine.get_tensor_dtype(name))
    if getattr(torch, dtype, None) != t.dtype:
        raise AmedError(f"engine tensor {name!r} is {dtype}, buffer is {t.dtype}")
    shape = tuple(int(d) for d in context.get_tensor_shape(name))
    if shape != tuple(t.shape):
        raise AmedError(f"engine tensor {name!r} has shape {shape} for this batch, buffer has {tuple(t.shape)}")
