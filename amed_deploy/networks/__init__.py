"""Independent re-implementation of the EDM networks (SongUNet, DhariwalUNet and preconditioners).

Official EDM code is non-commercially licensed, so this package rebuilds the networks from documented
facts with identical parameter names, shapes and order; official state dicts and `_init_kwargs` from
snapshots therefore load straight into these classes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

from ..errors import AmedError
from .dhariwal import DhariwalUNet
from .layers import GroupNorm, TappableUNet
from .precond import MODEL_TYPES, EDMPrecond, VEPrecond, VPPrecond, iDDPMPrecond
from .songunet import SongUNet

__all__ = [
    "MODEL_TYPES",
    "NETWORK_CLASSES",
    "CIFAR10_KWARGS",
    "DhariwalUNet",
    "EDMPrecond",
    "SongUNet",
    "VEPrecond",
    "VPPrecond",
    "build_network",
    "count_parameters",
    "feature_shapes",
    "iDDPMPrecond",
    "image_shape",
    "randomize_",
]

NETWORK_CLASSES: dict[str, type[nn.Module]] = {
    "EDMPrecond": EDMPrecond,
    "VPPrecond": VPPrecond,
    "VEPrecond": VEPrecond,
    "iDDPMPrecond": iDDPMPrecond,
}

# The released edm-cifar10-32x32-cond-vp configuration (55.7M parameters): benchmarks and tests.
CIFAR10_KWARGS: dict[str, Any] = dict(
    img_resolution=32,
    img_channels=3,
    label_dim=10,
    model_type="SongUNet",
    model_channels=128,
    channel_mult=[2, 2, 2],
    num_blocks=4,
    attn_resolutions=[16],
    augment_dim=9,
    dropout=0.13,
    embedding_type="positional",
    encoder_type="standard",
    decoder_type="standard",
    channel_mult_noise=1,
    resample_filter=[1, 1],
)

# Integer constructor arguments of the preconditioners and both U-Nets: (smallest, largest) allowed.
# The upper bounds only cap what makes construction itself slow (module count, iDDPM's M-step loop);
# channel counts are left to the weight-shape check, which build_model runs on the meta device.
_INT_KWARGS: dict[str, tuple[int, int | None]] = {
    "img_resolution": (1, None),
    "img_channels": (1, None),
    "label_dim": (0, None),
    "augment_dim": (0, None),
    "model_channels": (1, None),
    "channel_mult_emb": (1, None),
    "channel_mult_noise": (1, None),
    "num_blocks": (1, 64),
    "M": (1, 10_000),
}
_INT_LIST_KWARGS: dict[str, tuple[int, int]] = {"channel_mult": (1, 16), "attn_resolutions": (0, 64)}
_FLOAT_KWARGS = ("sigma_min", "sigma_max", "sigma_data", "beta_d", "beta_min", "epsilon_t", "C_1", "C_2")
_PROBABILITY_KWARGS = ("dropout", "label_dropout")
_CONSTRUCTION_ERRORS = (
    TypeError,
    ValueError,
    KeyError,
    IndexError,
    ZeroDivisionError,
    RuntimeError,
    OverflowError,
    MemoryError,
    RecursionError,
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_int(short: str, name: str, value: Any, lo: int, hi: int | None) -> None:
    if not _is_int(value):
        kind = type(value).__name__
        raise AmedError(f"cannot build {short}: {name} must be an integer, got {_brief(value)} ({kind})")
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise AmedError(f"cannot build {short}: {name} must be {bound}, got {value}")


def _validate_kwargs(short: str, kwargs: dict[str, Any]) -> None:
    """Refuse values the constructors would turn into a crash, a huge allocation or a broken net,
    so a hostile or damaged checkpoint fails with one line before anything is built."""
    for name, (lo, hi) in _INT_KWARGS.items():
        if name in kwargs:
            _check_int(short, name, kwargs[name], lo, hi)
    for name, (min_len, max_len) in _INT_LIST_KWARGS.items():
        if name not in kwargs:
            continue
        value = kwargs[name]
        if not isinstance(value, (list, tuple)):
            raise AmedError(f"cannot build {short}: {name} must be a list of integers, got {_brief(value)}")
        if not min_len <= len(value) <= max_len:
            raise AmedError(f"cannot build {short}: {name} must have {min_len} to {max_len} entries, got {len(value)}")
        for i, entry in enumerate(value):
            _check_int(short, f"{name}[{i}]", entry, 1, None)
    if "resample_filter" in kwargs:
        f = kwargs["resample_filter"]
        if (
            not isinstance(f, (list, tuple))
            or not 1 <= len(f) <= 64
            or not all(_is_real(v) and math.isfinite(v) for v in f)
            or sum(f) == 0
        ):
            raise AmedError(
                f"cannot build {short}: resample_filter must be 1 to 64 finite numbers with a non-zero sum, "
                f"got {_brief(f)}"
            )
    for name in _FLOAT_KWARGS:
        if name in kwargs and not _is_real(kwargs[name]):
            raise AmedError(f"cannot build {short}: {name} must be a number, got {_brief(kwargs[name])}")
    for name in _PROBABILITY_KWARGS:
        if name in kwargs and not (_is_real(kwargs[name]) and 0 <= kwargs[name] <= 1):
            raise AmedError(f"cannot build {short}: {name} must be a number in [0, 1], got {_brief(kwargs[name])}")
    if "use_fp16" in kwargs and not isinstance(kwargs["use_fp16"], bool):
        raise AmedError(f"cannot build {short}: use_fp16 must be true or false, got {_brief(kwargs['use_fp16'])}")
    res, levels = kwargs.get("img_resolution"), kwargs.get("channel_mult")
    if _is_int(res) and isinstance(levels, (list, tuple)) and levels and res % (1 << (len(levels) - 1)):
        raise AmedError(
            f"cannot build {short}: img_resolution {res} is not divisible by 2^{len(levels) - 1}, "
            f"which {len(levels)} resolution levels (channel_mult) need"
        )


def _check_group_norms(short: str, net: nn.Module) -> None:
    """EDM's GroupNorm uses min(32, C // 4) groups; a channel count that gives 0 groups or does not
    divide evenly builds fine but fails on the first forward pass, so refuse it here."""
    for name, module in net.named_modules():
        if isinstance(module, GroupNorm):
            channels = module.weight.shape[0]
            if module.num_groups < 1 or channels % module.num_groups:
                raise AmedError(
                    f"cannot build {short}: {name} normalises {channels} channels, which EDM's GroupNorm cannot "
                    f"split into {max(module.num_groups, 0)} groups (model_channels/channel_mult are inconsistent)"
                )


class _MetaConstruction(TorchFunctionMode):
    """Like ``with torch.device("meta")``, except that ``torch.as_tensor(t)`` of an existing tensor
    keeps t's device, as it does outside the context. VPPrecond computes its sigma range from
    ``torch.as_tensor`` of a CPU tensor, which the plain meta context would move to meta (and then
    fail on ``float()``)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        keeps_device = func in (torch.as_tensor, torch.asarray) and bool(args) and isinstance(args[0], torch.Tensor)
        if func in _device_constructors() and kwargs.get("device") is None and not keeps_device:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def build_network(class_name: str, kwargs: dict[str, Any], *, meta: bool = False) -> nn.Module:
    """Construct a preconditioned network from an official class name and its `_init_kwargs`.

    Accepts a dotted name ('training.networks.EDMPrecond'). Unknown classes, kwargs that the official
    constructor would not accept, and values that would crash or never work (negative sizes, bools for
    ints, an image size the levels cannot halve) raise AmedError, so a bad checkpoint fails with one
    line. ``meta=True`` builds it on the meta device: its state-dict names and shapes without
    allocating any memory (what build_model checks a checkpoint against before building for real).
    """
    short = class_name.rsplit(".", 1)[-1] if isinstance(class_name, str) else class_name
    cls = NETWORK_CLASSES.get(short) if isinstance(short, str) else None
    if cls is None:
        raise AmedError(f"unsupported network class {class_name!r}; supported: {', '.join(NETWORK_CLASSES)}")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise AmedError(f"cannot build {short}: kwargs must be a dict with string keys")
    _validate_kwargs(short, kwargs)
    try:
        if meta:
            with _MetaConstruction():
                net = cls(**kwargs)
        else:
            net = cls(**kwargs)
    except _CONSTRUCTION_ERRORS as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if len(reason) > 200:
            reason = reason[:197] + "..."
        raise AmedError(f"cannot build {short} from kwargs {sorted(kwargs)}: {type(exc).__name__}: {reason}") from None
    _check_group_norms(short, net)
    return net


def image_shape(net: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) of one image the network denoises; every network here is square."""
    return (net.img_channels, net.img_resolution, net.img_resolution)


def count_parameters(net: nn.Module) -> int:
    """Number of trainable-parameter elements (buffers excluded), as EDM's tables count them."""
    return sum(p.numel() for p in net.parameters())


def feature_shapes(net: nn.Module) -> dict[str, tuple[int, int, int]]:
    """Valid tap names of a U-Net or preconditioner, mapped to per-sample (C, H, W)."""
    unet = getattr(net, "model", net)
    if not isinstance(unet, TappableUNet):
        raise AmedError(f"{type(net).__name__} has no feature taps")
    return dict(unet.tap_shapes)


@torch.no_grad()
def randomize_(net: nn.Module, seed: int = 0, scale: float = 1.0) -> nn.Module:
    """Re-initialise every parameter with small seeded random values, in place; returns net.

    Official nets zero-ish their output layers (x1e-5) so F is ~0 and D is ~c_skip x, which makes
    parity tests vacuous. Here matrices get std scale/sqrt(fan_in), norm gains 1 + 0.1 N(0,1) and
    biases 0.05 N(0,1): outputs are O(1) and depend on every layer. Buffers are left alone.
    Values are drawn on the CPU, so the result is the same on every device.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for name, p in net.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if p.ndim >= 2:
            value = noise * (scale / p[0].numel() ** 0.5)
        elif name.endswith("weight"):
            value = 1 + 0.1 * scale * noise
        else:
            value = 0.05 * scale * noise
        p.copy_(value.to(p.dtype))
    return net
