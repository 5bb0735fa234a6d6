"""Parity of an exported graph with the fp32 PyTorch reference: the one comparison behind the
exporter's check (ONNX Runtime CPU, before anything is written) and `amed-deploy check` (every
backend present on this machine, on a graph already written: `amed_deploy.check`). Nothing here runs
a backend, so the exporter uses it without the runtime.

The reference is the graph's own module, `DeployModule(network, "fp32")`, run in fp32 on the CPU on
fixed example inputs drawn from the graph's GraphSpec (seeded, several sigmas per batch). A backend
passes when, for every output, its max abs error is within `TOLERANCE[spec.precision]`. The decision
is plain numpy (Polygraphy's comparator is not used): a non-finite backend output is an error of inf,
because NaN compares false and a max over NaN errors would pass a graph that outputs only NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .amed_network import AMEDNetwork, DeployModule
from .errors import AmedError
from .graph import LABELS, SIGMA, SIGMA_NEXT, X, output_names
from .metadata import GraphSpec

# Parity bounds against the fp32 PyTorch module, on images whose scale is O(1).
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2}
SEEDS = (0, 1)  # example-input draws per comparison (the exporter's check uses these)

# One backend evaluation: graph inputs (torch, CPU) -> outputs by name (numpy, any float dtype).
RunFn = Callable[[Mapping[str, Tensor]], Mapping[str, np.ndarray]]


def tolerance(spec: GraphSpec) -> float:
    """The graph precision's bound; a precision without an exported form has nothing to compare."""
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
        module = DeployModule(network, "fp32").cpu().eval()
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
