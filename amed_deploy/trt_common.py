"""The TensorRT helpers the engine builder (exporters/trt_build.py) and the TensorRT executor
(runtime/trt_executor.py) share: the import with an install hint, a logger that keeps errors for our
messages, engine deserialisation, an engine's I/O list and its check against the graph contract, and
the GPU identity manifests record. Neither side imports the other; both import this.

TensorRT is imported lazily, so this module imports on machines without it.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import torch

from .errors import AmedError
from .graph import IMAGE_IO, dtype_name, io_dtype, io_shapes
from .metadata import GraphSpec

INSTALL_HINT = (
    "install it with `pip install 'amed-deploy[tensorrt]'` (or `pip install tensorrt-cu13`) "
    "on a machine that can reach NVIDIA's package index"
)
# TensorRT DataType member name -> dtype name used in manifests (graph.dtype_name: torch's attribute name).
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


def trt_dtype_name(trt: ModuleType, dt: Any) -> str:
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
        dtype = trt_dtype_name(trt, engine.get_tensor_dtype(name))
        out.append(
            {"name": name, "mode": mode, "dtype": dtype, "shape": [int(d) for d in engine.get_tensor_shape(name)]}
        )
    return out


def check_engine_io(spec: GraphSpec, io: list[dict]) -> None:
    """Refuse an engine whose I/O names, directions or dtypes differ from what the graph spec promises.

    The classic TensorRT 11 failure is an engine that silently runs in fp32 although the graph is fp16
    (precision now comes only from the ONNX types): its x/denoised would be float32 here.
    """
    ins, outs = io_shapes(spec, spec.batch_min)
    expected = {n: ("input", dtype_name(io_dtype(spec, n))) for n in ins}
    expected.update({n: ("output", dtype_name(io_dtype(spec, n))) for n in outs})
    got = {t["name"]: (t["mode"], t["dtype"]) for t in io}
    if set(got) != set(expected):
        raise AmedError(f"engine I/O tensors {sorted(got)} differ from the graph's {sorted(expected)}")
    for name, (mode, dtype) in expected.items():
        if got[name][0] != mode:
            raise AmedError(f"engine tensor {name!r} is an {got[name][0]}, expected an {mode}")
        if got[name][1] != dtype:
            hint = ""
            if name in IMAGE_IO and spec.precision == "fp16":
                hint = (
                    " (TensorRT built an fp32 engine from an fp16 graph: TensorRT 11 networks are strongly typed, "
                    "so the ONNX itself must be fp16; re-export with --precision fp16)"
                )
            raise AmedError(f"engine tensor {name!r} is {got[name][1]}, the {spec.precision} graph needs {dtype}{hint}")


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
