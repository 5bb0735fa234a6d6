"""Building the network a checkpoint describes, after checking its weights fit it and are finite."""

from __future__ import annotations

import torch

from amed_deploy.checkpoint.format import Checkpoint, check_state_dict
from amed_deploy.errors import AmedError, first_line

__all__ = ["build_model"]


def _few(items: list[str]) -> str:
    return ", ".join(items[:4]) + (f", ... ({len(items) - 4} more)" if len(items) > 4 else "")


def _check_shapes(ckpt: Checkpoint, expected: dict[str, torch.Size]) -> None:
    sd = ckpt.state_dict
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {list(sd[k].shape)} vs {list(v)}" for k, v in expected.items() if k in sd and sd[k].shape != v]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (checkpoint vs network: {_few(shapes)})")
        raise AmedError(f"the weights do not match {ckpt.network_class}: " + "; ".join(parts))


def _check_finite(ckpt: Checkpoint) -> None:
    """NaN/inf weights build and run, silently producing NaN images; refuse them up front."""
    bad = []
    for key, t in ckpt.state_dict.items():
        if t.is_floating_point() or t.is_complex():
            count = int(t.numel() - torch.isfinite(t).sum())
            if count:
                bad.append((key, count))
    if bad:
        key, count = bad[0]
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise AmedError(
            f"the checkpoint has {count} non-finite values (NaN/inf) in {key!r}{more}; "
            "the checkpoint is damaged or training diverged"
        )


def build_model(ckpt: Checkpoint) -> torch.nn.Module:
    """Construct the network and load the weights strictly; returns it in eval mode without grads.

    The network is first built on the meta device (no memory) and its state-dict names and shapes
    compared with the checkpoint's, so absurd kwargs (model_channels=100000) are refused before
    anything is allocated; non-finite weights are refused too."""
    try:  # imported here: a torch lacking the private APIs networks/ relies on is then one AmedError
        from amed_deploy.networks import build_network
    except ImportError as e:
        raise AmedError(f"network implementations are not available ({e})") from None
    if not isinstance(ckpt.network_kwargs, dict):
        raise AmedError(f"network_kwargs is a {type(ckpt.network_kwargs).__name__}, not a dict")
    sd = check_state_dict(ckpt.state_dict, "the checkpoint")
    kwargs = dict(ckpt.network_kwargs)
    short = ckpt.network_class.rsplit(".", 1)[-1] if isinstance(ckpt.network_class, str) else ""
    m = kwargs.get("M", 1000)
    if short == "iDDPMPrecond" and "u" in sd and isinstance(m, int) and not isinstance(m, bool) and m >= 1:
        # iDDPM's constructor runs an M-step loop on the CPU even on meta: check its one buffer first
        if list(sd["u"].shape) != [m + 1]:
            raise AmedError(
                f"the weights do not match {ckpt.network_class}: 1 shape mismatches "
                f"(checkpoint vs network: u {list(sd['u'].shape)} vs {[m + 1]})"
            )

    def construct(meta: bool) -> torch.nn.Module:
        try:
            return build_network(ckpt.network_class, dict(kwargs), meta=meta)
        except AmedError:
            raise
        except (TypeError, ValueError, KeyError) as e:  # build_network maps these; kept as a backstop
            reason = first_line(e)
            raise AmedError(f"cannot build {ckpt.network_class} from the checkpoint's kwargs: {reason}") from None

    skeleton = construct(meta=True)
    _check_shapes(ckpt, {k: v.shape for k, v in skeleton.state_dict().items()})
    del skeleton
    _check_finite(ckpt)
    model = construct(meta=False)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise AmedError(f"cannot load the weights into {ckpt.network_class}: {first_line(e)}") from None
    return model.eval().requires_grad_(False)
