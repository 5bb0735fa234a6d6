"""Which `Sampler.load` option applies where, as one table. An option given where it does not apply
(to another backend's file, without the option it qualifies, or on the CPU where it needs CUDA) is
refused with one AmedError naming it and what it applies to: silently ignoring it would hide a mistake
(an fp16 request that runs fp32, a predictor that is not the one in the graph)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import AmedError


@dataclass(frozen=True)
class Backend:
    runtime: str  # what runs the file, as messages name it
    files: str  # the kind of file it runs, as messages name it


TORCH = Backend("the PyTorch executor", "a checkpoint (.pt, .safetensors, .pkl)")
ONNX = Backend("ONNX Runtime", "an exported graph (.onnx)")
TENSORRT = Backend("TensorRT", "a TensorRT plan (.plan)")
BACKENDS = {".pt": TORCH, ".safetensors": TORCH, ".pkl": TORCH, ".onnx": ONNX, ".plan": TENSORRT}


@dataclass(frozen=True)
class Applies:
    """Where one option means something; `unset` is its value when the caller did not give it."""

    backend: Backend | None = None  # the one backend that takes it (None: every backend)
    needs: str | None = None  # the option it qualifies, which must be given too
    cuda: str | None = None  # what it does on a CUDA device (None: it works on the CPU too)
    why: str = ""  # what it is for, said when it is refused
    flag: str | None = None  # its `amed-deploy run` flag, where it has one
    unset: object = None


OPTIONS = {
    "predictor": Applies(TORCH, why="an exported graph or plan already contains its predictor", flag="--predictor"),
    "precision": Applies(TORCH, why="an exported graph's precision was fixed at export"),
    "ignore_checkpoint_mismatch": Applies(
        TORCH,
        needs="predictor",
        why="it pairs a predictor with a checkpoint it was not distilled for",
        flag="--ignore-checkpoint-mismatch",
        unset=False,
    ),
    "compile": Applies(TORCH, why="it compiles the checkpoint's network with torch.compile", unset=False),
    "provider_options": Applies(
        ONNX, cuda="configure ONNX Runtime's CUDA provider", why="they configure its CUDA provider"
    ),
    "cuda_graph": Applies(cuda="records the loop on a CUDA GPU", flag="--cuda-graph", unset=False),
    "solver": Applies(flag="--solver"),
    "schedule": Applies(needs="solver", why="it chooses a training-free solver's time points"),
    "afs": Applies(needs="solver", why="it chooses a training-free solver's first step"),
    "solver_options": Applies(
        needs="solver",
        why="they set a training-free solver's options",
        flag="--max-order, --predict-x0/--predict-noise, --lower-order-final, --thresholding",
    ),
}


def backend_of(path: Path) -> Backend:
    """The backend that runs a file, from its extension."""
    suffix = path.suffix.lower()
    if suffix not in BACKENDS:
        raise AmedError(
            f"unknown file type {suffix!r}; expected .plan, .onnx or a checkpoint (.pt, .safetensors, .pkl)"
        )
    return BACKENDS[suffix]


def refuse_inapplicable(backend: Backend, device: torch.device, **options: object) -> None:
    """Raise for the first option (in table order) given where it does not apply."""
    given = {name for name, value in options.items() if value != OPTIONS[name].unset}
    for name, rule in OPTIONS.items():
        if name not in given:
            continue
        option = _named(name)
        verb = "apply" if name.endswith("_options") else "applies"
        if rule.backend is not None and rule.backend != backend:
            raise AmedError(
                f"{option} {verb} to {rule.backend.runtime}, for {rule.backend.files}: {rule.why}; "
                f"not applicable to {backend.files}"
            )
        if rule.needs is not None and rule.needs not in given:
            raise AmedError(f"{option} {verb} to {_named(rule.needs)}: {rule.why}; pass {rule.needs} too")
        if rule.cuda is not None and device.type != "cuda":
            raise AmedError(f"{option} {rule.cuda}; this session runs on the CPU")


def _named(name: str) -> str:
    flag = OPTIONS[name].flag
    return f"{name} ({flag})" if flag else name
