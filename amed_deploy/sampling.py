"""The PyTorch reference path: load a checkpoint (and predictor), draw seeded inputs, run the shared
solver loop eagerly. Distillation, tests and the deployed runtime's parity checks all lean on it."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .amed_network import AMEDNetwork, TorchModel, graph_spec
from .checkpoint.build import build_model
from .checkpoint.format import model_sha256
from .checkpoint.load import load_checkpoint
from .config import DEFAULT_SCHEDULE, SamplerConfig, sigma_range
from .errors import AmedError
from .files import file_sha256
from .memory import check_fits
from .networks import image_shape
from .noise import make_inputs, seed_range, start_state
from .predictor_file import PredictorBundle, load_predictor
from .solvers import sample


@dataclass
class LoadedModel:
    network: AMEDNetwork
    checkpoint_sha256: str  # the model hash (architecture + weights), the same in every file format
    bundle: PredictorBundle | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return image_shape(self.network.net)


def load_model(
    ckpt: str | os.PathLike, predictor: str | os.PathLike | None = None, allow_mismatch: bool = False
) -> LoadedModel:
    """Checkpoint -> network, plus the predictor (refused if it was distilled for another model)."""
    checkpoint = load_checkpoint(ckpt)
    sha = model_sha256(checkpoint)
    net = build_model(checkpoint)
    if predictor is None:
        return LoadedModel(AMEDNetwork(net), sha)
    bundle = load_predictor(
        predictor, model_sha256=sha, checkpoint_sha256=file_sha256(ckpt), allow_mismatch=allow_mismatch
    )
    return LoadedModel(AMEDNetwork(net, bundle.predictor, bundle.tap), sha, bundle)


def baseline_sampler(
    net: torch.nn.Module,
    solver: str,
    nfe: int,
    schedule: str = DEFAULT_SCHEDULE,
    afs: bool = False,
    options: Mapping[str, object] | None = None,
) -> SamplerConfig:
    """A training-free solver at a given NFE, over the network's sampling range, with its reference's
    `options` (max_order, predict_x0, ...; the reference's defaults where not given)."""
    return SamplerConfig.create(solver, nfe, schedule, sigma_range(net), afs, options=options)


@torch.no_grad()
def reference_sample(
    network: AMEDNetwork,
    sampler: SamplerConfig,
    seed: int,
    batch: int,
    classes: int | Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    *,
    seeds: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Images in [-1, 1] (unclamped) of seeds seed..seed+batch-1, or of `seeds` (one per image, any
    batch), and the one-hot labels used."""
    seeds = seed_range(seed, batch) if seeds is None else list(seeds)
    batch = len(seeds)
    net = network.net
    if not sampler.solver_config.uses_predictor:
        network = AMEDNetwork(net)  # a training-free solver reads the bare network, whatever predictor it has
    elif network.predictor is None:
        raise AmedError(f"solver {sampler.solver} needs a predictor (--predictor amed5.pt)")
    spec = graph_spec(network, sampler if network.predictor is not None else None, "fp32", batch)
    check_fits(spec, batch, torch.device(device))
    noise, labels = make_inputs(seeds, image_shape(net), network.label_dim, classes)
    x0, labels_dev = start_state(noise, labels, sampler.t_steps[0], device)
    x, _ = sample(TorchModel(network, labels_dev), x0, sampler.t_steps, sampler.solver_config)
    check_finite(x, "the sampler")
    return x, labels


def check_finite(images: Tensor, who: str) -> None:
    """Non-finite images are an error on every path (an all-black PNG with exit 0 hides a broken model)."""
    bad = int((~torch.isfinite(images)).sum())
    if bad:
        raise AmedError(
            f"{who} produced {bad} NaN/inf values: the network overflows or its weights are damaged; nothing written"
        )
