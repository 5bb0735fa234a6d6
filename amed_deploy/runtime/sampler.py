"""The deployed sampler: one executor (TensorRT plan, ONNX graph, or PyTorch checkpoint), buffers
preallocated for a fixed (batch, NFE), and the shared solver loop from `amed_deploy.solvers`.

Concurrency model: a Sampler owns one set of device buffers, so calls on one Sampler are serialised
by a lock (safe from many threads, one at a time). For parallel sampling create several Samplers;
they share nothing. Every image is deterministic given its seed and class: the same whatever batch,
position in it, executor or device draws it (`noise.make_inputs`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor

from ..amed_network import graph_spec
from ..config import DEFAULT_SCHEDULE, SamplerConfig, refuse_other_formula, sigma_range, solver_options
from ..devices import resolve_device
from ..epd_table import EPDParams, EPDRow
from ..errors import AmedError, first_line
from ..graph import DENOISED, LABELS, SIGMA, SIGMA_NEXT, A, C, R, X
from ..metadata import GraphSpec
from ..noise import as_int, class_list, make_inputs, seed_range
from ..solvers import Evaluation, SolverConfig, canonical_solver, get_solver, sample
from .executor import CUDA_SETUP_LOCK, Executor
from .options import ONNX, TENSORRT, backend_of, refuse_inapplicable

T = TypeVar("T")
REBUILD = (
    "rebuild it with Sampler.load (after a sticky CUDA error such as an illegal memory access or a "
    "device-side assert, CUDA itself is unusable in this process: restart the process)"
)


@dataclass
class SampleOutput:
    images: Tensor  # [N,C,H,W] float32 on the sampler's device, unclamped (data range ~[-1, 1])
    labels: Tensor | None  # [N,L] one-hot, or None for unconditional models
    seeds: list[int]  # image i's seed


class ExecutorModel:
    """The solvers' Model interface over an executor's buffers: copy in, run, hand out views."""

    def __init__(self, executor: Executor):
        self.executor = executor
        spec, dev = executor.spec, executor.device
        batch = executor.inputs[X].shape[0]
        # g_phi's outputs for the step after AFS are constants of the graph: made once, on the device
        self._afs = None
        if spec.afs_rca is not None:
            heads = (torch.full((batch, 1, 1, 1), v, device=dev) for v in spec.afs_rca)
            self._afs = Evaluation(torch.empty(0, device=dev), *heads)
        self._amed = spec.kind == "amed"
        # an EPD graph's table: constants on the device, made once (CUDA-graph capturable)
        self._epd = None if spec.epd is None else EPDParams.from_values(spec.epd, dev)
        self._points = spec.parallel_points * batch  # the batch of the parallel call

    def __call__(self, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> Evaluation:
        ins, outs = self.executor.inputs, self.executor.outputs
        ins[X].copy_(x)
        ins[SIGMA].copy_(sigma)
        ins[SIGMA_NEXT].copy_(sigma_next)
        self.executor.run()
        denoised = outs[DENOISED].float()
        if not self._amed:
            return Evaluation(denoised)
        return Evaluation(denoised, outs[R], outs[C], outs[A])

    def denoise_points(self, x: Tensor, sigma: Tensor) -> Tensor:
        ins, outs = self.executor.buffers[self._points]  # its labels were repeated K times by Sampler.sample
        ins[X].copy_(x)
        ins[SIGMA].copy_(sigma)
        ins[SIGMA_NEXT].copy_(sigma)
        self.executor.run(self._points)
        return outs[DENOISED].float()

    def epd_row(self, n: int) -> EPDRow:
        if self._epd is None:
            raise AmedError("this graph carries no EPD table")
        return self._epd.row(n)

    def predict_without_feature(self, sigma: Tensor, sigma_next: Tensor) -> Evaluation:
        if self._afs is None:
            raise AmedError("this graph carries no AFS predictor constants (exported without AFS)")
        return self._afs


class Sampler:
    """Sampler.load(path).sample(seed=...) -> images. See the module docstring for threading."""

    def __init__(self, executor: Executor, sampler: SamplerConfig, cuda_graph: bool = False):
        self.executor = executor
        self.spec: GraphSpec = executor.spec
        self.config = sampler
        self.device = executor.device
        self.batch = executor.inputs[X].shape[0]
        self._model = ExecutorModel(executor)
        self._noise = torch.zeros_like(executor.inputs[X], dtype=torch.float32)
        self._lock = threading.Lock()
        self._graph: torch.cuda.CUDAGraph | None = None
        self._want_graph = cuda_graph and self.device.type == "cuda" and executor.capturable
        self._result: Tensor | None = None
        self._broken: str | None = None  # set by a device fault: every later call refuses

    @property
    def graphed(self) -> bool:
        """Whether calls replay the whole NFE loop as one recorded CUDA graph."""
        return self._want_graph

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        batch: int | None = None,
        device: str | torch.device | None = None,
        predictor: str | os.PathLike | None = None,
        solver: str | None = None,
        nfe: int | None = None,
        schedule: str | None = None,
        afs: bool | None = None,
        solver_options: Mapping[str, object] | None = None,
        precision: str | None = None,
        cuda_graph: bool = False,
        ignore_checkpoint_mismatch: bool = False,
        compile: bool = False,
        provider_options: dict[str, str] | None = None,
    ) -> Sampler:
        """Open a `.plan` (TensorRT + manifest), an `.onnx` (ONNX Runtime), or a checkpoint
        (`.pt`/`.safetensors`/`.pkl`, PyTorch, with `predictor` for AMED). `solver`/`nfe` (and
        `schedule`, `afs` and `solver_options`, its reference's max_order, predict_x0, lower_order_final,
        thresholding) choose a training-free solver on a plain denoiser; an AMED graph fixes its own
        (`solver` may name it, with the same settings, as a check). A checkpoint runs in `precision` fp32
        (default), fp16 or bf16, with `compile` through torch.compile; `provider_options` tune an `.onnx`
        file's ONNX Runtime CUDA provider.
        An option that does not apply to the file or device is refused, never ignored (`runtime.options`)."""
        path = Path(path)
        dev = resolve_device(device)
        if batch is not None:
            batch = as_int(batch, "batch")
            if batch < 1:
                raise AmedError(f"batch must be >= 1, got {batch}")
        backend = backend_of(path)
        refuse_inapplicable(
            backend,
            dev,
            predictor=predictor,
            precision=precision,
            ignore_checkpoint_mismatch=ignore_checkpoint_mismatch,
            compile=compile,
            provider_options=provider_options,
            cuda_graph=cuda_graph,
            solver=solver,
            schedule=schedule,
            afs=afs,
            solver_options=solver_options,
        )
        # a training-free solver on an EPD graph's denoiser makes no parallel call: bind no K*B buffers
        parallel = solver is None or get_solver(solver).parallel_points > 1
        if backend is ONNX:
            from .onnx_executor import OnnxExecutor

            executor: Executor = OnnxExecutor.open(
                path, batch, dev, cuda_graph=cuda_graph, provider_options=provider_options, parallel=parallel
            )
        elif backend is TENSORRT:
            from .trt_executor import TRTExecutor

            executor = TRTExecutor.open(path, batch, dev, parallel=parallel)
        else:
            executor = _open_checkpoint(
                path, predictor, 1 if batch is None else batch, dev, precision or "fp32", solver, nfe,
                schedule or DEFAULT_SCHEDULE, bool(afs), solver_options,
                ignore_checkpoint_mismatch, compile, parallel,
            )  # fmt: skip
        config = resolve_sampler(executor.spec, solver, nfe, schedule, afs, solver_options)
        return cls(executor, config, cuda_graph=cuda_graph)

    def sample(
        self,
        seed: int | None = None,
        classes: int | Sequence[int] | None = None,
        noise: Tensor | None = None,
        *,
        seeds: Sequence[int] | None = None,
    ) -> SampleOutput:
        """The images of `seeds` (one seed per image, at most the batch; a shorter list is padded to the
        batch and only its images are returned), or of the batch's seeds seed, seed+1, ... (default 0).
        `classes`: one for every image or one per image [default: drawn from each image's seed].
        `noise` (standard normal [B,C,H,W]) overrides the seeded noise of a whole batch."""
        if seeds is None:
            seeds = seed_range(0 if seed is None else seed, self.batch)
        elif seed is not None or noise is not None:
            raise AmedError("pass seeds, or seed (and noise), not both")
        n = len(seeds)
        if not 1 <= n <= self.batch:
            raise AmedError(f"got {n} seeds for a Sampler of batch {self.batch}: pass 1..{self.batch} per call")
        given = class_list(classes, n, self.spec.label_dim)
        pad = self.batch - n
        seeded, labels = make_inputs(
            [*seeds, *[seeds[-1]] * pad],
            self.spec.image_shape,
            self.spec.label_dim,
            None if given is None else [*given, *[given[-1]] * pad],
        )
        if noise is not None:
            if tuple(noise.shape) != tuple(self._noise.shape):
                raise AmedError(f"noise must have shape {tuple(self._noise.shape)}, got {tuple(noise.shape)}")
            if not torch.isfinite(noise).all():
                raise AmedError("input noise contains NaN or infinite values")
            seeded = noise
        with self._lock:
            if self._broken is not None:
                raise AmedError(f"this Sampler is unusable after an earlier failure ({self._broken}); {REBUILD}")
            try:
                self._noise.copy_(seeded)
                if labels is not None:
                    self._set_labels(labels)
                images = self._run().clone()
            except torch.cuda.OutOfMemoryError:
                self._graph = None  # recoverable: nothing is corrupted, a later call may fit
                raise AmedError(f"out of GPU memory while sampling a batch of {self.batch}") from None
            except Exception as e:
                self._graph = None  # a failure mid-capture leaves no usable graph: record again next time
                if _is_device_fault(e):
                    self._broken = f"{type(e).__name__}: {first_line(e, 200)}"
                    raise AmedError(f"the device failed while sampling ({self._broken}); {REBUILD}") from e
                raise
        if not torch.isfinite(images).all():
            raise AmedError(
                "the sampler produced NaN/inf values"
                + (" (fp16 overflow? try the fp32 graph)" if self.spec.precision == "fp16" else "")
            )
        return SampleOutput(images[:n], None if labels is None else labels[:n], list(seeds))

    def _set_labels(self, labels: Tensor) -> None:
        """Every call batch's labels: an EPD graph's parallel call gets each sample's K times, sample-major
        (the points of one sample are adjacent, and so are its labels)."""
        for batch, (inputs, _) in self.executor.buffers.items():
            inputs[LABELS].copy_(labels.repeat_interleave(batch // self.batch, dim=0))

    def _loop(self) -> Tensor:
        x, _ = sample(self._model, self._noise * self.config.t_steps[0], self.config.t_steps, self.config.solver_config)
        return x

    def _run(self) -> Tensor:
        if not self._want_graph:
            return self._loop()
        if self._graph is None:
            self._capture()
        self._graph.replay()
        return self._result

    def _capture(self) -> None:
        """Record the whole NFE loop as one CUDA graph (static buffers, so replay needs no Python)."""
        self._graph, self._result = capture_graph(self._loop, self.device)


def capture_graph(fn: Callable[[], T], device: torch.device) -> tuple[torch.cuda.CUDAGraph, T]:
    """Record fn as one CUDA graph after two warm-up runs on a side stream; returns the graph and
    fn's output from the capture (the buffer each replay rewrites).

    One capture at a time per process, in thread-local error mode: other threads may keep sampling
    (or allocating) meanwhile. CUDA's default global mode makes their calls fail the capture
    ("operation not permitted when stream is capturing"), seen with 8 Samplers capturing in 8 threads."""
    with CUDA_SETUP_LOCK:
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up allocator and backend outside capture
                fn()
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = fn()
        return graph, out


def resolve_sampler(
    spec: GraphSpec,
    solver: str | None,
    nfe: int | None,
    schedule: str | None = None,
    afs: bool | None = None,
    options: Mapping[str, object] | None = None,
) -> SamplerConfig:
    """The graph's own configuration, or a training-free solver run on its denoiser output over the
    graph's recorded sigma range (so every executor gets the same time points). `options` are the
    solver's (max_order, predict_x0, lower_order_final, thresholding); for the graph's own solver they
    must be the recorded ones, since its predictor was distilled for that formula."""
    own = spec.sampler
    given = solver_options(options)
    name = None if solver is None else canonical_solver(solver)
    if name is None or (own is not None and name == own.solver):
        if own is None:
            raise AmedError(
                "this graph has no learned sampler (AMED or EPD): choose a solver and NFE (e.g. --solver ipndm --nfe 5)"
            )
        if nfe is not None and nfe != own.nfe:
            raise AmedError(
                f"this graph was exported for NFE {own.nfe} ({own.solver}), not NFE {nfe}: "
                "distil and export a predictor for that NFE"
            )
        SolverConfig(own.solver, own.afs, **given)  # an option its solver does not take: the registry's error
        fixed_by_export = [("schedule", schedule, own.schedule), ("afs", afs, own.afs)]
        fixed_by_export += [(option, value, getattr(own, option)) for option, value in given.items()]
        for option, value, fixed in fixed_by_export:
            if value is not None and value != fixed:
                raise AmedError(
                    f"this graph's {own.solver} sampler was exported with {option} {fixed}, not {value}: "
                    f"its predictor was distilled for {'that formula' if option in given else 'those time points'}"
                )
        return own
    if get_solver(name).uses_predictor:
        if spec.kind != "denoiser" and own is not None:
            refuse_other_formula(own.solver, name)
        raise AmedError(
            f"solver {name} needs a predictor distilled for it (amed-deploy distill --student {name}); "
            "this graph has none"
        )
    if nfe is None:
        raise AmedError(f"--nfe is needed with --solver {solver}")
    return SamplerConfig.create(name, nfe, schedule or DEFAULT_SCHEDULE, spec.sigma_range, bool(afs), options=given)


def _open_checkpoint(
    path, predictor, batch, dev, precision, solver, nfe, schedule, afs, options, mismatch, compile, parallel
) -> Executor:
    """Load the checkpoint (+ predictor), describe it as the graph it would export to, and open it."""
    from ..sampling import load_model
    from .torch_executor import TorchExecutor

    loaded = load_model(path, predictor, allow_mismatch=mismatch)
    own = loaded.bundle.sampler if loaded.bundle else None
    if own is None and solver is not None and nfe is not None and not get_solver(solver).uses_predictor:
        sigmas = sigma_range(loaded.network.net)
        own = SamplerConfig.create(solver, nfe, schedule, sigmas, afs, options=solver_options(options))
    spec = graph_spec(loaded.network, own, precision, batch, checkpoint_sha256=loaded.checkpoint_sha256)
    return TorchExecutor.open(loaded.network, batch, dev, spec=spec, compile=compile, parallel=parallel)


def _is_device_fault(e: Exception) -> bool:
    """A CUDA/driver failure (its buffers and possibly the whole context are suspect), as opposed to an
    ordinary exception that leaves the Sampler's state intact."""
    accelerator_error = getattr(torch, "AcceleratorError", ())
    if accelerator_error and isinstance(e, accelerator_error):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        key in text for key in ("CUDA error", "CUDA driver error", "cudaError", "CUBLAS_STATUS", "CUDNN_STATUS")
    )
