"""Predictor files (`amed5.pt`): g_phi's weights plus everything needed to sample with it, and the
SHA-256 of the checkpoint it was distilled for, so it is never silently paired with another model."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import torch

from . import __version__
from .atomic import atomic_write_bytes
from .config import SamplerConfig
from .errors import AmedError
from .predictor import AMEDPredictor, PredictorConfig

FORMAT = "amed-deploy/predictor"
FORMAT_VERSION = 1


@dataclass
class PredictorBundle:
    predictor: AMEDPredictor
    sampler: SamplerConfig
    tap: str
    checkpoint_sha256: str
    training: dict = field(default_factory=dict)  # teacher, kimg, lr, seed, losses, versions


def save_predictor(path: str | os.PathLike, bundle: PredictorBundle) -> None:
    """Write atomically; loadable with torch.load(weights_only=True)."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "predictor_config": bundle.predictor.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in bundle.predictor.state_dict().items()},
        "sampler": bundle.sampler.to_dict(),
        "tap": bundle.tap,
        "checkpoint_sha256": bundle.checkpoint_sha256,
        "training": {"amed_deploy": __version__, "torch": str(torch.__version__), **bundle.training},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_predictor(
    path: str | os.PathLike, checkpoint_sha256: str | None = None, force: bool = False
) -> PredictorBundle:
    """Load and validate; refuse a predictor distilled for another checkpoint unless `force`."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AmedError(f"predictor file not found: {path}") from None
    except Exception as e:  # torch raises many types for corrupt files
        raise AmedError(
            f"{path} is not a readable predictor file ({type(e).__name__}): truncated or corrupt?"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise AmedError(f"{path} is not an amed-deploy predictor file (made by `amed-deploy distill`)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise AmedError(f"{path}: predictor format version {payload.get('format_version')} is not supported")
    try:
        predictor = AMEDPredictor(PredictorConfig(**payload["predictor_config"]))
        predictor.load_state_dict(payload["state_dict"])
        bundle = PredictorBundle(
            predictor=predictor.eval(),
            sampler=SamplerConfig.from_dict(payload["sampler"]),
            tap=str(payload["tap"]),
            checkpoint_sha256=str(payload["checkpoint_sha256"]),
            training=dict(payload.get("training") or {}),
        )
    except AmedError:
        raise
    except (KeyError, TypeError, RuntimeError) as e:
        raise AmedError(f"{path}: malformed predictor file: {type(e).__name__}: {e}") from None
    if checkpoint_sha256 is not None and bundle.checkpoint_sha256 != checkpoint_sha256 and not force:
        raise AmedError(
            f"{path} was distilled for checkpoint sha256 {bundle.checkpoint_sha256[:12]}..., but this checkpoint "
            f"is {checkpoint_sha256[:12]}...; use the matching checkpoint or pass --force"
        )
    return bundle
