"""ONNX Runtime executor: the CUDA provider with I/O binding on torch tensors (optionally replaying a
CUDA graph), or the CPU provider, the built-in default on machines without a GPU."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ..errors import AmedError, first_line
from ..files import check_input_file
from ..graph import SIGMA, SIGMA_NEXT, dtype_name, image_dtype, io_dtype, io_shapes
from ..metadata import GraphSpec, onnx_graph_spec, spec_from_metadata_props
from .executor import CUDA_SETUP_LOCK, Buffers, Executor, allocate

if TYPE_CHECKING:
    import onnxruntime as ort

# ONNX Runtime's names of the graph dtypes it runs (bf16 graphs are a PyTorch-executor precision).
_ORT_TYPES = {torch.float32: "tensor(float)", torch.float16: "tensor(float16)"}


def open_session(path: str | os.PathLike, providers: list | None = None) -> ort.InferenceSession:
    """An InferenceSession with friendly errors for missing, truncated or foreign files."""
    import onnxruntime as ort

    path = Path(path)
    check_input_file(path, "an ONNX graph")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own types for protobuf and graph errors
        raise AmedError(f"{path} is not a loadable ONNX graph (truncated or corrupt?): {first_line(e)}") from None


def read_spec(session: ort.InferenceSession, source: str) -> GraphSpec:
    """The GraphSpec an open session's graph carries."""
    return spec_from_metadata_props(dict(session.get_modelmeta().custom_metadata_map), source)


class OnnxExecutor(Executor):
    """Runs an exported graph with preallocated torch buffers bound through ORT's I/O binding, one
    binding per call batch size. Backend options: `cuda_graph` (ORT records and replays its own CUDA
    graph, one per batch size, kept apart by the run option gpu_graph_id) and `provider_options`."""

    capturable = False  # ORT records its own CUDA graph (enable_cuda_graph)

    def __init__(
        self,
        spec: GraphSpec,
        device: torch.device,
        session: ort.InferenceSession,
        bindings: dict[int, tuple[ort.IOBinding, ort.RunOptions | None]],
        buffers: dict[int, Buffers],
        cuda_graph: bool,
    ):
        super().__init__(spec, device, buffers)
        self.session, self.bindings, self.cuda_graph = session, bindings, cuda_graph

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        batch: int | None = None,
        device: torch.device | str = "cpu",
        *,
        cuda_graph: bool = False,
        provider_options: dict[str, str] | None = None,
        parallel: bool = True,
    ) -> OnnxExecutor:
        """Open a session, check the graph against its metadata, bind buffers for `batch` (default: the
        graph's optimum; an EPD graph's parallel call too unless `parallel` is False). `provider_options`
        override the CUDA provider's defaults (ORT's documented names, e.g. use_tf32="1", which our fp32
        sessions switch off so that fp32 graphs compute in fp32)."""
        device = torch.device(device)
        target = onnx_graph_spec(path).target if Path(path).is_file() else "portable"
        if target == "ort-cuda" and device.type != "cuda":
            raise AmedError(
                f"{path} was exported for ONNX Runtime's CUDA provider (target ort-cuda: contrib ops the CPU "
                "provider lacks); run it on a CUDA device, or export the portable graph for the CPU"
            )
        if device.type == "cuda":
            options = {
                "device_id": device.index or 0,
                "use_tf32": "0",
                # the exhaustive search can pick much slower fp16 convolution kernels (docs/BENCHMARKS.md)
                "cudnn_conv_algo_search": "HEURISTIC",
            }
            if target == "ort-cuda":
                options["prefer_nhwc"] = "1"  # its GroupNorm/NhwcConv nodes are channels-last: no transposes
            if cuda_graph:
                options["enable_cuda_graph"] = "1"
            options.update(provider_options or {})
            providers = [("CUDAExecutionProvider", options)]
        elif provider_options:
            raise AmedError("provider_options configure ONNX Runtime's CUDA provider; this session runs on the CPU")
        else:
            providers = ["CPUExecutionProvider"]
        session = open_session(path, providers)
        if device.type == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
            raise AmedError("ONNX Runtime has no CUDA provider here: install onnxruntime-gpu with CUDA 13")
        spec = read_spec(session, str(path))
        if image_dtype(spec) not in _ORT_TYPES:
            raise AmedError(f"{path}: {spec.precision} graphs are not supported by ONNX Runtime here")
        batch = spec.batch_opt if batch is None else batch
        spec.call_batches(batch, parallel)  # an EPD graph's parallel call too, before anything is loaded
        _check_signature(session, spec, path, batch)  # before allocating: the buffers' sizes come from the metadata
        buffers = allocate(spec, batch, device, parallel)
        bindings = {
            b: _bind(session, ins, outs, device, cuda_graph, k) for k, (b, (ins, outs)) in enumerate(buffers.items())
        }
        executor = cls(spec, device, session, bindings, buffers, cuda_graph)
        if device.type == "cuda":
            with CUDA_SETUP_LOCK:
                executor._warm_up()
        return executor

    def _warm_up(self) -> None:
        """Make the first runs now, one session at a time: they choose kernels and allocate, and with
        cuda_graph ORT records its graph during them. Concurrent first runs in several threads failed
        ("operation not permitted when stream is capturing"), and a graph that cannot be captured
        should fail here with a clear message rather than in the middle of sampling."""
        for inputs, _ in self.buffers.values():
            inputs[SIGMA].fill_(1.0)
            inputs[SIGMA_NEXT].fill_(0.5)
        try:
            for _ in range(3 if self.cuda_graph else 1):
                for batch in self.buffers:
                    self.run(batch)
            torch.cuda.current_stream(self.device).synchronize()
        except Exception as e:  # ORT reports CUDA errors as RuntimeError with a long C++ trace
            if not self.cuda_graph:
                raise
            raise AmedError(
                "ONNX Runtime could not record this graph as a CUDA graph (a kernel in it is not "
                f"capturable: {str(e).split(';')[0][-120:]}); load it without cuda_graph, or use the "
                "PyTorch or TensorRT executor, whose whole-loop CUDA graph works"
            ) from None

    def _execute(self, batch: int) -> None:
        binding, run_options = self.bindings[batch]
        if self.device.type == "cuda":
            # ORT runs (and replays its CUDA graph) on a stream of its own, which does not wait for torch's
            # pending writes to the inputs: finish them first. (Handing it torch's stream instead does not
            # work for the default stream, whose handle 0 reads as "no stream given".)
            torch.cuda.current_stream(self.device).synchronize()
        # returns once ORT has synchronised its streams (run option disable_synchronize_execution_providers
        # is 0 by default): the outputs are complete for torch. (IOBinding.synchronize_outputs would add a
        # cudaDeviceSynchronize, which also waits for every other Sampler's work.)
        self.session.run_with_iobinding(binding, run_options)

    def _release(self) -> None:
        self.bindings, self.session = {}, None


def _bind(
    session: ort.InferenceSession,
    inputs: dict[str, Tensor],
    outputs: dict[str, Tensor],
    device: torch.device,
    cuda_graph: bool,
    graph_id: int,
) -> tuple[ort.IOBinding, ort.RunOptions | None]:
    """One I/O binding over one batch size's buffers, and with `cuda_graph` the run options that give
    its recorded graph an id of its own (ORT keeps one CUDA graph per gpu_graph_id)."""
    import onnxruntime as ort

    binding = session.io_binding()
    for group, bind in ((inputs, binding.bind_input), (outputs, binding.bind_output)):
        for name, t in group.items():
            element_type = np.dtype(dtype_name(t.dtype)).type
            bind(name, device.type, device.index or 0, element_type, list(t.shape), t.data_ptr())
    run_options = None
    if cuda_graph:
        run_options = ort.RunOptions()
        run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
    return binding, run_options


def _check_signature(session: ort.InferenceSession, spec: GraphSpec, path: str | os.PathLike, batch: int) -> None:
    """The metadata must describe the graph it sits in: same I/O names, dtypes and shapes.

    Metadata can be edited without touching the graph; a static-batch graph whose record claims a
    batch range of 1e9 would otherwise size buffers (and the memory check) from the claim."""
    ins, outs = io_shapes(spec, batch)
    for kind, expected, args in (
        ("input", ins, session.get_inputs()),
        ("output", outs, session.get_outputs()),
    ):
        have = {a.name: a for a in args}
        if set(have) != set(expected):
            raise AmedError(
                f"{path}: metadata and graph disagree: graph {kind}s are {sorted(have)}, "
                f"metadata implies {sorted(expected)}"
            )
        for name, shape in expected.items():
            dtype = _ORT_TYPES[io_dtype(spec, name)]
            if have[name].type != dtype:
                raise AmedError(f"{path}: graph I/O {name!r} is {have[name].type}, metadata implies {dtype}")
            _check_shape(spec, path, name, have[name].shape, shape)


def _check_shape(spec: GraphSpec, path: str | os.PathLike, name: str, real: object, shape: tuple[int, ...]) -> None:
    claim = f"metadata says {spec.image_shape} images, label_dim {spec.label_dim}"
    if not isinstance(real, (list, tuple)) or len(real) != len(shape):
        raise AmedError(f"{path}: metadata and graph disagree: graph I/O {name!r} has shape {real}, {claim}")
    dims = [d if isinstance(d, int) else None for d in real]  # symbolic dims: str or None
    if dims[1:] != list(shape[1:]):
        raise AmedError(
            f"{path}: metadata and graph disagree: graph I/O {name!r} has shape {list(real)}, "
            f"expected {list(shape)} ({claim})"
        )
    static = dims[0]
    if static is not None and not (static == shape[0] == spec.batch_min == spec.batch_max):
        raise AmedError(
            f"{path}: metadata and graph disagree: graph I/O {name!r} has the real shape {list(real)} "
            f"(static batch {static}), but the metadata claims batch range {spec.batch_min}..{spec.batch_max} "
            f"and batch {shape[0]} was requested; re-export the graph"
        )
