"""The network the sampler drives: an EDM denoiser, its feature tap and (optionally) g_phi, as one
module. This exact module is what the PyTorch reference runs, what distillation trains through,
and what the exporter traces into a single ONNX graph."""

from __future__ import annotations

import copy
import re

import torch
from torch import Tensor, nn

from . import __version__
from .config import SamplerConfig, sigma_range
from .epd_table import EPDRow, EPDTable
from .errors import AmedError
from .graph import PRECISION_DTYPES
from .metadata import GraphSpec
from .networks import feature_shapes, image_shape
from .predictor import FEATURE_SIZE, AMEDPredictor
from .solvers import Evaluation


def default_tap(net: nn.Module) -> str:
    """The last encoder block at 8x8 resolution (AMED's choice, e.g. 'enc.8x8_block3' for CIFAR-10)."""
    pattern = re.compile(rf"enc\.{FEATURE_SIZE}x{FEATURE_SIZE}_block(\d+)$")
    blocks = [(int(m.group(1)), name) for name in feature_shapes(net) if (m := pattern.match(name))]
    if not blocks:
        raise AmedError(
            f"this network has no {FEATURE_SIZE}x{FEATURE_SIZE} encoder block for the AMED predictor "
            f"(image resolution {getattr(net, 'img_resolution', '?')}); pass --tap with an 8x8 feature"
        )
    return max(blocks)[1]


def check_tap(net: nn.Module, tap: str) -> str:
    """Refuse a tap that does not exist or is not 8x8, naming the alternatives."""
    shapes = feature_shapes(net)
    if tap not in shapes:
        raise AmedError(f"unknown feature tap {tap!r}; valid taps: {', '.join(shapes)}")
    _, h, w = shapes[tap]
    if (h, w) != (FEATURE_SIZE, FEATURE_SIZE):
        eight = [n for n, s in shapes.items() if s[1:] == (FEATURE_SIZE, FEATURE_SIZE)]
        raise AmedError(f"tap {tap!r} is {h}x{w}; the AMED predictor reads an 8x8 feature: {', '.join(eight)}")
    return tap


class AMEDNetwork(nn.Module):
    """forward(x, sigma, sigma_next, class_labels) -> (denoised, r, c, a), or (denoised,) without a
    predictor or with an EPD table (which the solver reads through TorchModel.epd_row). The feature is
    taken from the same U-Net pass and detached: gradients reach g_phi only through its own parameters
    and through the network's inputs (x_s and a*s), never into the U-Net."""

    def __init__(self, net: nn.Module, predictor: AMEDPredictor | EPDTable | None = None, tap: str | None = None):
        super().__init__()
        self.net = net
        self.predictor = predictor
        self.tap = None if predictor is None or self.epd else check_tap(net, tap or default_tap(net))

    @property
    def epd(self) -> bool:
        """The predictor is an EPD table: input-independent, so the network runs as a plain denoiser."""
        return isinstance(self.predictor, EPDTable)

    @property
    def label_dim(self) -> int:
        return int(getattr(self.net, "label_dim", 0))

    def forward(
        self, x: Tensor, sigma: Tensor, sigma_next: Tensor, class_labels: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        if self.predictor is None or self.epd:
            return (self.net(x, sigma, class_labels),)
        denoised, (feature,) = self.net(x, sigma, class_labels, taps=(self.tap,))
        r, c, a = self.predictor(feature.detach(), sigma, sigma_next)
        return denoised, r, c, a


class DeployModule(nn.Module):
    """AMEDNetwork with the deployed graph's boundary: x and denoised in the graph's precision (the
    U-Net runs in fp16/bf16 in half-precision graphs; preconditioning, sigmas and g_phi stay fp32).
    Traced by the exporter and run by the PyTorch executor, so both compute the same thing.

    It holds a private copy of `network`: casting, moving or freezing this module never changes the
    caller's network (which may still be trained, exported in another precision or sampled from)."""

    def __init__(self, network: AMEDNetwork, precision: str = "fp32"):
        super().__init__()
        self.network = copy.deepcopy(network)
        self.image_dtype = PRECISION_DTYPES[precision]
        if precision != "fp32":
            self.network.net.model.to(self.image_dtype)

    def forward(self, x: Tensor, sigma: Tensor, sigma_next: Tensor, class_labels: Tensor | None = None):
        out = self.network(x.float(), sigma, sigma_next, class_labels)
        return (out[0].to(self.image_dtype), *out[1:])


def afs_constants(network: AMEDNetwork, sampler: SamplerConfig | None) -> tuple[float, float, float] | None:
    """g_phi on a zero feature for the first interval after AFS: fixed by the times, so computed once."""
    if network.predictor is None or network.epd or sampler is None or not sampler.afs:
        return None
    device = next(network.predictor.parameters()).device
    t = torch.tensor([sampler.t_steps[0]], device=device)
    t_next = torch.tensor([sampler.t_steps[1]], device=device)
    with torch.no_grad():
        r, c, a = network.predictor(None, t, t_next)
    return (float(r), float(c), float(a))


def graph_spec(
    network: AMEDNetwork,
    sampler: SamplerConfig | None,
    precision: str,
    batch: int,
    batch_range: tuple[int, int] | None = None,
    checkpoint_sha256: str | None = None,
    predictor_sha256: str | None = None,
) -> GraphSpec:
    """The record describing this network as a deployed graph (ONNX metadata, manifests, PyTorch executor)."""
    net = network.net
    lo, hi = batch_range if batch_range else (batch, batch)
    if not 1 <= lo <= batch <= hi:
        raise AmedError(f"need 1 <= min batch <= batch <= max batch, got {lo} <= {batch} <= {hi}")
    if network.predictor is not None and sampler is None:
        raise AmedError("an AMED graph needs its sampler configuration")
    epd = None
    if network.epd:
        epd = network.predictor.params().values()
        hi *= network.predictor.config.points  # the parallel call of a batch of hi samples has K * hi
    # live U-Net activations per sample, for the memory check before allocating (no forward pass): every
    # block output in fp32, twice (skips kept for the decoder, plus the working tensors)
    try:
        elements = sum(c * h * w for c, h, w in feature_shapes(net).values())
        activations = {"activation_bytes_per_sample": elements * 4 * 2}
    except AmedError:  # a network without taps: the memory check counts buffers only
        activations = {}
    return GraphSpec(
        kind="denoiser" if network.predictor is None else "epd" if network.epd else "amed",
        precision=precision,
        image_shape=image_shape(net),
        sigma_range=sigma_range(net),
        label_dim=network.label_dim,
        batch_min=lo,
        batch_opt=batch,
        batch_max=hi,
        sampler=sampler,
        afs_rca=afs_constants(network, sampler),
        epd=epd,
        tap=network.tap,
        checkpoint_sha256=checkpoint_sha256,
        predictor_sha256=predictor_sha256,
        network={
            "class": type(net).__name__,
            "model_type": getattr(net, "model_type", None),
            **activations,
        },
        producer={"amed_deploy": __version__, "torch": str(torch.__version__)},
    )


class TorchModel:
    """The solvers' Model interface over an AMEDNetwork in eager PyTorch, with class labels bound."""

    def __init__(self, network: AMEDNetwork, labels: Tensor | None = None):
        self.network = network
        self.labels = labels

    def __call__(self, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> Evaluation:
        out = self.network(x, sigma, sigma_next, self.labels)
        return Evaluation(*out)

    def denoise_points(self, x: Tensor, sigma: Tensor) -> Tensor:
        labels = self.labels
        if labels is not None:  # sample-major: sample b's K points are adjacent, so is its label
            labels = labels.repeat_interleave(x.shape[0] // labels.shape[0], dim=0)
        return self.network(x, sigma, sigma, labels)[0]

    def epd_row(self, n: int) -> EPDRow:
        if not self.network.epd:
            raise AmedError("this network has no EPD table")
        return self.network.predictor.row(n)

    def predict_without_feature(self, sigma: Tensor, sigma_next: Tensor) -> Evaluation:
        if self.network.predictor is None or self.network.epd:
            raise AmedError("this network has no AMED predictor")
        r, c, a = self.network.predictor(None, sigma, sigma_next)
        return Evaluation(torch.empty(0, device=sigma.device), r, c, a)
