"""Parity of an exported graph with the fp32 PyTorch reference: the one implementation behind the
exporter's check (ONNX Runtime CPU, before anything is written) and `amed-deploy check` (every
backend present on this machine, on a graph already written).

The reference is the graph's own module, `DeployModule(network, "fp32")`, run in fp32 on the CPU on
fixed example inputs drawn from the graph's GraphSpec (seeded, several sigmas per batch). A backend
passes when, for every output, its max abs error is within `TOLERANCE[spec.precision]`. The decision
is plain numpy (Polygraphy's comparator is not used): a non-finite backend output is an error of inf,
because NaN compares false and a max over NaN errors would pass a graph that outputs only NaN.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .amed_network import AMEDNetwork, DeployModule
from .errors import AmedError
from .metadata import GraphSpec
from .runtime.executor import DENOISED, LABELS, PREDICTOR_OUTPUTS, SIGMA, SIGMA_NEXT, X

# Parity bounds against the fp32 PyTorch module, on images whose scale is O(1).
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2}
SEEDS = (0, 1)  # example-input draws per comparison (the exporter's check uses these)

# One backend evaluation: graph inputs (torch, CPU) -> outputs by name (numpy, any float dtype).
RunFn = Callable[[Mapping[str, Tensor]], Mapping[str, np.ndarray]]


def tolerance(spec: GraphSpec) -> float:
    if spec.precision not in TOLERANCE:
        raise AmedError(f"graph precision {spec.precision} has no exported form (fp32 or fp16); nothing to compare")
    return TOLERANCE[spec.precision]


def example_inputs(spec: GraphSpec, batch: int, seed: int = 0) -> dict[str, Tensor]:
    """Seeded graph inputs: sigmas log-uniform in [0.01, 80], x at the matching noise scale, one-hot labels."""
    gen = torch.Generator().manual_seed(seed)
    c, h, w = spec.image_shape
    sigma = torch.exp(torch.empty(batch).uniform_(np.log(0.01), np.log(80.0), generator=gen))
    inputs = {
        X: torch.randn(batch, c, h, w, generator=gen) * (sigma.reshape(-1, 1, 1, 1) ** 2 + 0.25).sqrt(),
        SIGMA: sigma,
        SIGMA_NEXT: sigma * 0.5,
    }
    if spec.conditional:
        idx = torch.randint(spec.label_dim, (batch,), generator=gen)
        inputs[LABELS] = torch.nn.functional.one_hot(idx, spec.label_dim).float()
    if spec.precision == "fp16":
        inputs[X] = inputs[X].half()
    return inputs


def output_names(spec: GraphSpec) -> list[str]:
    return [DENOISED, *(PREDICTOR_OUTPUTS if spec.kind == "amed" else ())]


@dataclass
class Reference:
    """The fp32 PyTorch outputs on fixed example inputs, computed once and compared with any backend."""

    spec: GraphSpec
    batch: int
    seeds: tuple[int, ...]
    cases: list[tuple[dict[str, Tensor], dict[str, np.ndarray]]]  # (inputs, reference outputs) per seed

    @classmethod
    def compute(
        cls, network: AMEDNetwork, spec: GraphSpec, batch: int | None = None, seeds: Iterable[int] = SEEDS
    ) -> Reference:
        """Refuses (AmedError) a network whose own outputs are NaN/inf: nothing can be compared with it."""
        batch = spec.batch_opt if batch is None else batch
        seeds = tuple(seeds)
        module = DeployModule(copy.deepcopy(network).cpu(), "fp32").eval()
        names = output_names(spec)
        cases = []
        for seed in seeds:
            inputs = example_inputs(spec, batch, seed)
            with torch.no_grad():
                out = module(*(v.float() if k == X else v for k, v in inputs.items()))
            if len(out) != len(names):
                raise AmedError(f"the network has {len(out)} outputs, the graph {len(names)} ({', '.join(names)})")
            want = {}
            for name, w in zip(names, out):
                if not torch.isfinite(w).all():
                    raise AmedError(
                        f"the network's {name!r} output is NaN/inf on test inputs in PyTorch (damaged weights, or "
                        "values beyond float range)"
                    )
                want[name] = w.double().numpy()
            cases.append((inputs, want))
        return cls(spec, batch, seeds, cases)

    def errors(self, run: RunFn) -> dict[str, float]:
        """Max abs error of every output of `run` vs the reference over all cases; inf where non-finite."""
        errors = dict.fromkeys(output_names(self.spec), 0.0)
        for inputs, want in self.cases:
            got = run(inputs)
            for name, w in want.items():
                g = np.asarray(got[name])
                if g.shape != w.shape:
                    raise AmedError(f"output {name!r} has shape {list(g.shape)}, the reference {list(w.shape)}")
                if not np.isfinite(g).all():
                    errors[name] = math.inf
                    continue
                errors[name] = max(errors[name], float(np.abs(g.astype(np.float64) - w).max()))
        return errors


def within(errors: Mapping[str, float], bound: float) -> dict[str, bool]:
    """Pass/fail per output: finite and at most `bound`."""
    return {name: bool(math.isfinite(v) and v <= bound) for name, v in errors.items()}


# ------------------------------------------------------------------------------------ backends of a graph


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


def run_executor(executor) -> RunFn:
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
    from .runtime.onnx_executor import OnnxExecutor

    name = "onnxruntime-cpu"
    if reference.spec.target == "ort-cuda":
        return BackendResult(
            name, "skipped", "the graph was exported for target ort-cuda (ONNX Runtime contrib ops the CPU provider "
            "lacks); it runs only on ONNX Runtime's CUDA provider",
        )  # fmt: skip
    executor = OnnxExecutor(onnx_path, reference.batch, torch.device("cpu"))
    return _result(name, reference, run_executor(executor))


def _ort_cuda(onnx_path: Path, reference: Reference) -> BackendResult:
    import onnxruntime as ort

    from .runtime.onnx_executor import OnnxExecutor

    name = "onnxruntime-cuda"
    if not torch.cuda.is_available():
        return BackendResult(name, "skipped", "no CUDA GPU is visible")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return BackendResult(name, "skipped", "this ONNX Runtime has no CUDA provider (install onnxruntime-gpu)")
    try:
        executor = OnnxExecutor(onnx_path, reference.batch, torch.device("cuda"))
    except AmedError as e:
        if "no CUDA provider" not in str(e):
            raise
        return BackendResult(name, "skipped", str(e))
    return _result(name, reference, run_executor(executor))


def _tensorrt(engine: Path | None, reference: Reference) -> BackendResult:
    from .runtime.trt_executor import INSTALL_HINT, TRTExecutor, import_tensorrt

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
    executor = TRTExecutor.open(engine, reference.batch, "cuda")
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
    from .files import file_sha256
    from .runtime.manifest import manifest_path_for, read_manifest

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
