"""ONNX Runtime executor: the CUDA provider with I/O binding on torch tensors (optionally replaying a
CUDA graph), or the CPU provider, the built-in default on machines without a GPU."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import AmedError
from ..metadata import GraphSpec, onnx_graph_spec, spec_from_metadata_props
from .executor import CUDA_SETUP_LOCK, DENOISED, SIGMA, SIGMA_NEXT, X, allocate, image_dtype, io_shapes

_ORT_TYPES = {torch.float32: "tensor(float)", torch.float16: "tensor(float16)"}
_NP_TYPES = {torch.float32: np.float32, torch.float16: np.float16}


def open_session(path: str | os.PathLike, providers: list | None = None):
    """An InferenceSession with friendly errors for missing, truncated or foreign files."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise AmedError(f"ONNX file not found: {path}")
    if path.stat().st_size == 0:
        raise AmedError(f"{path} is empty")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own types for protobuf and graph errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AmedError(f"{path} is not a loadable ONNX graph (truncated or corrupt?): {first}") from None


def read_spec(session, source: str) -> GraphSpec:
    return spec_from_metadata_props(dict(session.get_modelmeta().custom_metadata_map), source)


class OnnxExecutor:
    """Runs an exported graph with preallocated torch buffers bound through ORT's I/O binding."""

    capturable = False  # ORT records its own CUDA graph (enable_cuda_graph)

    def __init__(
        self,
        path: str | os.PathLike,
        batch: int | None,
        device: torch.device,
        cuda_graph: bool = False,
        provider_options: dict[str, str] | None = None,
    ):
        """`provider_options` override the CUDA provider's defaults (ORT's documented names, e.g.
        use_tf32="1", which our fp32 sessions switch off so that fp32 graphs compute in fp32)."""
        self.device = torch.device(device)
        target = onnx_graph_spec(path).target if Path(path).is_file() else "portable"
        if target == "ort-cuda" and self.device.type != "cuda":
            raise AmedError(
                f"{path} was exported for ONNX Runtime's CUDA provider (target ort-cuda: contrib ops the CPU "
                "provider lacks); run it on a CUDA device, or export the portable graph for the CPU"
            )
        if self.device.type == "cuda":
            options = {
                "device_id": self.device.index or 0,
                "use_tf32": "0",
                # Measured on the H100 (docs/BENCHMARKS.md): the exhaustive search picks convolution
                # kernels 2x slower on the fp16 CIFAR-10 graph at batch 256; elsewhere within 3%.
                "cudnn_conv_algo_search": "HEURISTIC",
            }
            if target == "ort-cuda":
                options["prefer_nhwc"] = "1"  # its GroupNorm/NhwcConv nodes are channels-last: no transposes
            if cuda_graph:
                options["enable_cuda_graph"] = "1"
            else:  # share torch's stream so torch ops and ORT kernels stay ordered without host syncs
                options["user_compute_stream"] = str(torch.cuda.current_stream(self.device).cuda_stream)
            options.update(provider_options or {})
            providers = [("CUDAExecutionProvider", options)]
        elif provider_options:
            raise AmedError("provider_options configure ONNX Runtime's CUDA provider; this session runs on the CPU")
        else:
            providers = ["CPUExecutionProvider"]
        self.session = open_session(path, providers)
        if self.device.type == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise AmedError("ONNX Runtime has no CUDA provider here: install onnxruntime-gpu with CUDA 13")
        self.spec = read_spec(self.session, str(path))
        if image_dtype(self.spec) not in _ORT_TYPES:
            raise AmedError(f"{path}: {self.spec.precision} graphs are not supported by ONNX Runtime here")
        batch = self.spec.batch_opt if batch is None else batch
        self.spec.check_batch(batch)
        self._check_signature(path, batch)  # before allocating: the buffers' sizes come from the metadata
        self.inputs, self.outputs = allocate(self.spec, batch, self.device)
        self.cuda_graph = cuda_graph
        self.binding = self.session.io_binding()
        for group, bind in ((self.inputs, self.binding.bind_input), (self.outputs, self.binding.bind_output)):
            for name, t in group.items():
                bind(
                    name,
                    self.device.type,
                    self.device.index or 0,
                    _NP_TYPES[t.dtype],
                    list(t.shape),
                    t.data_ptr(),
                )
        if self.device.type == "cuda":
            with CUDA_SETUP_LOCK:
                self._warm_up()

    def _warm_up(self) -> None:
        """Make the first runs now, one session at a time: they choose kernels and allocate, and with
        cuda_graph ORT records its graph during them. Concurrent first runs in several threads failed
        ("operation not permitted when stream is capturing"), and a graph that cannot be captured
        should fail here with a clear message rather than in the middle of sampling."""
        self.inputs[SIGMA].fill_(1.0)
        self.inputs[SIGMA_NEXT].fill_(0.5)
        try:
            for _ in range(3 if self.cuda_graph else 1):
                self.run()
            torch.cuda.current_stream(self.device).synchronize()
        except Exception as e:  # ORT reports CUDA errors as RuntimeError with a long C++ trace
            if not self.cuda_graph:
                raise
            raise AmedError(
                "ONNX Runtime could not record this graph as a CUDA graph (a kernel in it is not "
                f"capturable: {str(e).split(';')[0][-120:]}); load it without cuda_graph, or use the "
                "PyTorch or TensorRT executor, whose whole-loop CUDA graph works"
            ) from None

    def _check_signature(self, path: str | os.PathLike, batch: int) -> None:
        """The metadata must describe the graph it sits in: same I/O names, dtypes and shapes.

        Metadata can be edited without touching the graph; a static-batch graph whose record claims a
        batch range of 1e9 would otherwise size buffers (and the memory check) from the claim."""
        ins, outs = io_shapes(self.spec, batch)
        img = _ORT_TYPES[image_dtype(self.spec)]
        for kind, expected, args in (
            ("input", ins, self.session.get_inputs()),
            ("output", outs, self.session.get_outputs()),
        ):
            have = {a.name: a for a in args}
            if set(have) != set(expected):
                raise AmedError(
                    f"{path}: metadata and graph disagree: graph {kind}s are {sorted(have)}, "
                    f"metadata implies {sorted(expected)}"
                )
            for name, shape in expected.items():
                dtype = img if name in (X, DENOISED) else _ORT_TYPES[torch.float32]
                if have[name].type != dtype:
                    raise AmedError(f"{path}: graph I/O {name!r} is {have[name].type}, metadata implies {dtype}")
                self._check_shape(path, name, have[name].shape, shape)

    def _check_shape(self, path: str | os.PathLike, name: str, real: object, shape: tuple[int, ...]) -> None:
        spec = self.spec
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

    def run(self) -> None:
        if self.device.type == "cuda" and self.cuda_graph:
            torch.cuda.current_stream(self.device).synchronize()  # ORT replays on its own stream
        self.session.run_with_iobinding(self.binding)
