"""PyTorch executor: the checkpoint (+ predictor) run by PyTorch over the same preallocated buffers
as the engines. In fp32 on the CPU it is the reference the deployed graphs are checked against."""

from __future__ import annotations

import copy

import torch

from ..amed_network import AMEDNetwork, DeployModule
from ..metadata import GraphSpec
from .executor import DENOISED, PREDICTOR_OUTPUTS, allocate


class TorchExecutor:
    """Evaluates DeployModule(network) on the input buffers; channels_last on CUDA where it helps convs.

    compile=True hands the module to torch.compile (Inductor fuses GroupNorm, SiLU and the elementwise
    glue between convolutions; its own CUDA graphs are left off because the Sampler records the whole
    loop as one). Compilation happens on the first run, for this batch size, and takes a minute or so."""

    capturable = True

    def __init__(
        self,
        network: AMEDNetwork,
        spec: GraphSpec,
        batch: int,
        device: torch.device | str = "cpu",
        compile: bool = False,
    ):
        self.spec = spec
        self.device = torch.device(device)
        network = copy.deepcopy(network).to(self.device).eval().requires_grad_(False)
        self.module = DeployModule(network, spec.precision).eval()
        if self.device.type == "cuda":
            self.module.to(memory_format=torch.channels_last)
        if compile:
            self.module = torch.compile(self.module, dynamic=False)
        self.inputs, self.outputs = allocate(spec, batch, self.device)
        self._names = [DENOISED, *(PREDICTOR_OUTPUTS if spec.kind == "amed" else ())]

    @torch.no_grad()
    def run(self) -> None:
        out = self.module(*self.inputs.values())
        for name, value in zip(self._names, out, strict=True):
            self.outputs[name].copy_(value)
