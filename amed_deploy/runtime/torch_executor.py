"""PyTorch executor: the checkpoint (+ predictor) run by PyTorch over the same preallocated buffers
as the engines. In fp32 on the CPU it is the reference the deployed graphs are checked against."""

from __future__ import annotations

import torch

from ..amed_network import AMEDNetwork, DeployModule
from ..graph import output_names
from ..metadata import GraphSpec
from .executor import Buffers, Executor, allocate


class TorchExecutor(Executor):
    """Evaluates DeployModule(network) on the input buffers; channels_last on CUDA where it helps convs.

    Backend option compile=True hands the module to torch.compile (Inductor fuses GroupNorm, SiLU and the
    elementwise glue between convolutions; its own CUDA graphs are left off because the Sampler records
    the whole loop as one). Compilation happens on the first run, for this batch size, and takes a minute
    or so."""

    capturable = True

    def __init__(
        self,
        spec: GraphSpec,
        device: torch.device,
        module: torch.nn.Module,
        buffers: dict[int, Buffers],
    ):
        super().__init__(spec, device, buffers)
        self.module = module
        self._names = output_names(spec)

    @classmethod
    def open(
        cls,
        network: AMEDNetwork,
        batch: int | None = None,
        device: torch.device | str = "cpu",
        *,
        spec: GraphSpec,
        compile: bool = False,
        parallel: bool = True,
    ) -> TorchExecutor:
        """`network` in the precision `spec` records (graph_spec of this network), for `batch` (default:
        the spec's optimum; an EPD network's parallel call too unless `parallel` is False); the caller's
        network is left as it is (DeployModule holds its own copy)."""
        device = torch.device(device)
        batch = spec.batch_opt if batch is None else batch
        module = DeployModule(network, spec.precision).to(device).eval().requires_grad_(False)
        if device.type == "cuda":
            module.to(memory_format=torch.channels_last)
        if compile:
            module = torch.compile(module, dynamic=False)
        return cls(spec, device, module, allocate(spec, batch, device, parallel))

    @torch.no_grad()
    def _execute(self, batch: int) -> None:
        inputs, outputs = self.buffers[batch]
        out = self.module(*inputs.values())
        for name, value in zip(self._names, out, strict=True):
            outputs[name].copy_(value)

    def _release(self) -> None:
        self.module = None
