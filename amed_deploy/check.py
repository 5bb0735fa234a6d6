"""`amed-deploy check`: one exported graph compared with its fp32 PyTorch reference on every backend
present on this machine (ONNX Runtime CPU and CUDA, TensorRT), after checking that the checkpoint,
predictor and plan given are what the graph was made from. The comparison itself is `amed_deploy.parity`;
this module runs the backends through the runtime's executors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import AmedError
from .files import file_sha256
from .manifest import manifest_path_for, read_manifest
from .metadata import GraphSpec
from .parity import Reference, RunFn, tolerance, within
from .runtime.executor import Executor
from .runtime.onnx_executor import OnnxExecutor
from .runtime.trt_executor import TRTExecutor
from .trt_common import INSTALL_HINT, import_tensorrt


@dataclass
class BackendResult:
    name: str
    status: str  # "pass", "fail" or "skipped"
    reason: str = ""  # why it was skipped
    errors: dict[str, float] = field(default_factory=dict)
    passed: dict[str, bool] = field(default_factory=dict)

    @property
    def ran(self) -> bool:
        return self.status != "skipped"


def run_executor(executor: Executor) -> RunFn:
    """A RunFn over an executor's preallocated buffers (ONNX Runtime or TensorRT): copy in, run, copy out."""

    def run(inputs: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
        for name, value in inputs.items():
            executor.inputs[name].copy_(value)
        executor.run()
        if executor.device.type == "cuda":
            torch.cuda.synchronize(executor.device)
        return {name: t.detach().cpu().numpy().copy() for name, t in executor.outputs.items()}

    return run


def _result(name: str, reference: Reference, run: RunFn) -> BackendResult:
    errors = reference.errors(run)
    passed = within(errors, tolerance(reference.spec))
    return BackendResult(name, "pass" if all(passed.values()) else "fail", errors=errors, passed=passed)


def _ort_cpu(onnx_path: Path, reference: Reference) -> BackendResult:
    name = "onnxruntime-cpu"
    if reference.spec.target == "ort-cuda":
        return BackendResult(
            name, "skipped", "the graph was exported for target ort-cuda (ONNX Runtime contrib ops the CPU provider "
            "lacks); it runs only on ONNX Runtime's CUDA provider",
        )  # fmt: skip
    with OnnxExecutor.open(onnx_path, reference.batch, "cpu") as executor:
        return _result(name, reference, run_executor(executor))


def _ort_cuda(onnx_path: Path, reference: Reference) -> BackendResult:
    import onnxruntime as ort

    name = "onnxruntime-cuda"
    if not torch.cuda.is_available():
        return BackendResult(name, "skipped", "no CUDA GPU is visible")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return BackendResult(name, "skipped", "this ONNX Runtime has no CUDA provider (install onnxruntime-gpu)")
    try:
        executor = OnnxExecutor.open(onnx_path, reference.batch, "cuda")
    except AmedError as e:
        if "no CUDA provider" not in str(e):
            raise
        return BackendResult(name, "skipped", str(e))
    with executor:
        return _result(name, reference, run_executor(executor))


def _tensorrt(engine: Path | None, reference: Reference) -> BackendResult:
    name = "tensorrt"
    try:
        import_tensorrt()
    except AmedError as e:
        more = "" if engine is not None else " (then build a plan with `amed-deploy build` and pass it as --engine)"
        return BackendResult(name, "skipped", f"{e}{more}")
    if engine is None:
        return BackendResult(
            name, "skipped", "no --engine plan given: build one with `amed-deploy build --onnx G.onnx --out G.plan`"
        )
    if not torch.cuda.is_available():
        return BackendResult(name, "skipped", f"TensorRT needs a CUDA GPU and none is visible ({INSTALL_HINT})")
    with TRTExecutor.open(engine, reference.batch, "cuda") as executor:
        return _result(name, reference, run_executor(executor))


def check_backends(
    onnx_path: str | os.PathLike, reference: Reference, engine: str | os.PathLike | None = None
) -> list[BackendResult]:
    """ONNX Runtime CPU, ONNX Runtime CUDA (with a GPU and onnxruntime-gpu) and TensorRT (when it imports
    and `engine` is given), each compared with `reference`; a backend that cannot run here is skipped
    with the reason. Bad input (a graph or plan that does not load) raises AmedError."""
    onnx_path = Path(onnx_path)
    engine = None if engine is None else Path(engine)
    return [_ort_cpu(onnx_path, reference), _ort_cuda(onnx_path, reference), _tensorrt(engine, reference)]


# ------------------------------------------------------------------------- what the graph was made from


def check_graph_source(
    onnx_path: str | os.PathLike,
    spec: GraphSpec,
    loaded,
    predictor_sha256: str | None,
) -> None:
    """The checkpoint (+ predictor) must be what the graph was exported from, or the comparison means
    nothing. `loaded` is a `sampling.LoadedModel`; the graph's recorded hashes are checked where present."""
    if spec.kind == "amed" and predictor_sha256 is None:
        raise AmedError(f"{onnx_path} is an AMED graph (network + g_phi): pass the --predictor it was exported with")
    if spec.kind == "epd" and predictor_sha256 is None:
        raise AmedError(
            f"{onnx_path} is an EPD graph (its table in the metadata): pass the --predictor it was exported with"
        )
    if spec.kind == "denoiser" and predictor_sha256 is not None:
        raise AmedError(f"{onnx_path} is a plain denoiser graph (no g_phi): drop --predictor")
    if spec.checkpoint_sha256 is not None and spec.checkpoint_sha256 != loaded.checkpoint_sha256:
        raise AmedError(
            f"{onnx_path} was exported from model sha256 {spec.checkpoint_sha256[:12]}..., but this checkpoint is "
            f"{loaded.checkpoint_sha256[:12]}...: pass the checkpoint the graph was exported from"
        )
    if spec.predictor_sha256 is not None and predictor_sha256 not in (None, spec.predictor_sha256):
        raise AmedError(
            f"{onnx_path} was exported with predictor sha256 {spec.predictor_sha256[:12]}..., but this predictor "
            f"file is {predictor_sha256[:12]}...: pass the predictor the graph was exported with"
        )
    net = loaded.network.net
    if tuple(spec.image_shape) != tuple(loaded.image_shape) or spec.label_dim != loaded.network.label_dim:
        raise AmedError(
            f"{onnx_path} takes {'x'.join(map(str, spec.image_shape))} images with label_dim {spec.label_dim}; "
            f"this checkpoint's network ({type(net).__name__}) takes {'x'.join(map(str, loaded.image_shape))} "
            f"with label_dim {loaded.network.label_dim}"
        )


def check_engine_source(engine: str | os.PathLike, onnx_path: str | os.PathLike, spec: GraphSpec) -> None:
    """A TensorRT plan must have been built from this ONNX graph (its manifest records the graph's sha256);
    read from the manifest alone, so it is checked on machines without TensorRT too."""
    manifest = read_manifest(manifest_path_for(engine))
    if manifest.onnx_sha256 is not None:
        if manifest.onnx_sha256 != file_sha256(onnx_path):
            raise AmedError(
                f"{engine} was built from another ONNX graph (sha256 {manifest.onnx_sha256[:12]}...), not "
                f"{onnx_path}: pass the graph it was built from, or rebuild with amed-deploy build"
            )
        return
    built = manifest.spec
    if (built.kind, built.checkpoint_sha256, built.predictor_sha256, built.precision) != (
        spec.kind,
        spec.checkpoint_sha256,
        spec.predictor_sha256,
        spec.precision,
    ):
        raise AmedError(f"{engine} was built from another graph than {onnx_path} (its manifest says so)")
