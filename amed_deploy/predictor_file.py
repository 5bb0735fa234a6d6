"""Predictor files (`amed5.pt`): g_phi's weights plus everything needed to sample with it, and the
hash of the model it was distilled for, so it is never silently paired with another model.

The binding is `model_sha256` (checkpoint.format.model_sha256: class, kwargs and weight values), so the
same weights converted between .pt and .safetensors or stored in fp16 keep their predictors;
`checkpoint_sha256`, the file's hash, stays as provenance and is the binding for files written
before `model_sha256` existed (an optional field, added without a version bump).

Format versions: 1, the first; 2, the sampler's solver name means the published formula of that name
(issue #17), so a version-1 file's name is read through `RENAMED_FORMULAS` (its "amed_ipndm" was the
formula now called "amed_ipndm_uneven"), and amed-deploy versions that would read a version-2
"amed_ipndm" as the old formula refuse the file instead; 3, EPD tables (`predictor_kind` "epd", no tap),
written only for EPD students, so AMED files stay readable by version-2 readers.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from . import __version__
from .checkpoint.format import pickled_global
from .config import MAX_NFE, SamplerConfig
from .epd_table import EPDConfig, EPDTable
from .errors import AmedError
from .files import atomic_write_bytes
from .predictor import AMEDPredictor, PredictorConfig
from .records import check_stamp, stamp
from .solvers import get_solver

FORMAT = "amed-deploy/predictor"
FORMAT_VERSION = 3  # 2: solver names are the published formulas (#17); 3: EPD tables; see the module docstring
AMED_VERSION = 2  # what an AMED predictor file is stamped with (nothing in it changed in version 3)
MISMATCH_HINT = "use the checkpoint it was distilled for, or pass --ignore-checkpoint-mismatch"
_KIND = "an amed-deploy predictor file (made by `amed-deploy distill`)"
_SHA256 = re.compile(r"[0-9a-f]{64}")
# g_phi is ~9k parameters; these bounds keep a damaged config from allocating gigabytes.
_MAX_HIDDEN = 1 << 16
_MAX_TIME_CHANNELS = 1 << 10


@dataclass
class PredictorBundle:
    predictor: AMEDPredictor | EPDTable
    sampler: SamplerConfig
    tap: str | None  # the U-Net feature g_phi reads; None for an EPD table
    checkpoint_sha256: str  # sha256 of the checkpoint file it was distilled against (provenance)
    training: dict = field(default_factory=dict)  # teacher, kimg, lr, seed, losses, versions
    model_sha256: str | None = None  # checkpoint.format.model_sha256 of that model: what loading checks


def save_predictor(path: str | os.PathLike, bundle: PredictorBundle, *, overwrite: bool = True) -> None:
    """Write atomically; loadable with torch.load(weights_only=True). `overwrite=False` refuses an
    existing `path` (the CLI without --force) instead of replacing it."""
    epd = isinstance(bundle.predictor, EPDTable)
    config = bundle.predictor.config.to_dict()
    if epd:
        config["intervals"] = bundle.predictor.intervals
    payload = {
        **stamp(FORMAT, FORMAT_VERSION if epd else AMED_VERSION),
        "predictor_kind": "epd" if epd else "amed",
        "predictor_config": config,
        "state_dict": {k: v.detach().cpu().clone() for k, v in bundle.predictor.state_dict().items()},
        "sampler": bundle.sampler.to_dict(),
        "tap": bundle.tap,
        "checkpoint_sha256": bundle.checkpoint_sha256,
        "training": {"amed_deploy": __version__, "torch": str(torch.__version__), **bundle.training},
    }
    if bundle.model_sha256 is not None:
        payload["model_sha256"] = bundle.model_sha256
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue(), overwrite=overwrite)


def _read_payload(path: str | os.PathLike) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AmedError(f"predictor file not found: {path}") from None
    except IsADirectoryError:
        raise AmedError(f"{path} is a directory, not a predictor file") from None
    except pickle.UnpicklingError as e:
        name = pickled_global(e)
        if name is None:
            raise AmedError(
                f"{path} is not a readable predictor file (UnpicklingError): truncated or corrupt?"
            ) from None
        raise AmedError(
            f"{path} holds a pickled Python object ({name}), e.g. a whole model saved with torch.save(model): "
            "it cannot be loaded without running its code. Predictor files hold only tensors and plain values; "
            "write one with `amed-deploy distill` (save_predictor)"
        ) from None
    except Exception as e:  # torch raises many types for corrupt files
        raise AmedError(
            f"{path} is not a readable predictor file ({type(e).__name__}): truncated or corrupt?"
        ) from None


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _predictor_config(raw: Any, path: str | os.PathLike) -> PredictorConfig:
    if not isinstance(raw, dict):
        raise AmedError(f"{path}: malformed predictor file: predictor_config is a {type(raw).__name__}, not a dict")
    config = PredictorConfig(**raw)
    for name, lo, hi in (("hidden", 1, _MAX_HIDDEN), ("time_channels", 4, _MAX_TIME_CHANNELS)):
        value = getattr(config, name)
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not lo <= value <= hi
            or (name != "hidden" and value % 2)
        ):
            raise AmedError(f"{path}: malformed predictor file: predictor_config.{name} is {_brief(value)}")
    for name in ("scale_dir", "scale_time"):
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise AmedError(f"{path}: malformed predictor file: predictor_config.{name} is {_brief(value)}")
    return config


def _check_kind(path: str | os.PathLike, bundle: PredictorBundle, kind: str) -> None:
    """The predictor must be what its sampler's solver learns, shaped for its time points."""
    solver = get_solver(bundle.sampler.solver)
    if solver.predictor != kind:
        raise AmedError(f"{path}: malformed predictor file: a {kind} predictor for solver {solver.name}")
    table = bundle.predictor
    if isinstance(table, EPDTable) and (
        table.intervals != bundle.sampler.num_points - 1 or table.config.points != solver.parallel_points
    ):
        raise AmedError(
            f"{path}: malformed predictor file: an EPD table of {table.intervals} intervals x {table.config.points} "
            f"points for {solver.name} with {bundle.sampler.num_points} time points"
        )


def _epd_table(raw: Any, path: str | os.PathLike) -> EPDTable:
    if not isinstance(raw, dict):
        raise AmedError(f"{path}: malformed predictor file: predictor_config is a {type(raw).__name__}, not a dict")
    raw = dict(raw)
    intervals = raw.pop("intervals", None)
    if type(intervals) is not int or not 1 <= intervals <= MAX_NFE:
        raise AmedError(f"{path}: malformed predictor file: predictor_config.intervals is {_brief(intervals)}")
    return EPDTable(intervals, EPDConfig(**raw))


def _optional_sha(payload: dict, key: str, path: str | os.PathLike) -> str | None:
    value = payload.get(key)
    if value is not None and not (isinstance(value, str) and _SHA256.fullmatch(value)):
        raise AmedError(f"{path}: malformed predictor file: {key} is not a sha256 hex digest")
    return value


def load_predictor(
    path: str | os.PathLike,
    model_sha256: str | None = None,
    checkpoint_sha256: str | None = None,
    allow_mismatch: bool = False,
) -> PredictorBundle:
    """Load and validate; refuse a predictor distilled for another model unless `allow_mismatch`.

    The model hash is compared when both the file and the caller have one; otherwise the checkpoint
    file hash (files written before model hashes). A check that was asked for but cannot be made
    (the file has no model hash and no file hash was given) is refused too, never skipped.
    """
    payload = _read_payload(path)
    if not isinstance(payload, dict):
        raise AmedError(f"{path} is not {_KIND}: it holds a {type(payload).__name__}, not a dict")
    version = check_stamp(payload, FORMAT, FORMAT_VERSION, str(path), _KIND)
    try:
        kind = payload.get("predictor_kind", "amed")
        if kind == "epd":
            predictor = _epd_table(payload["predictor_config"], path)
        elif kind == "amed":
            predictor = AMEDPredictor(_predictor_config(payload["predictor_config"], path))
        else:
            raise AmedError(f"{path}: malformed predictor file: unknown predictor_kind {_brief(kind)}")
        state = payload["state_dict"]
        if not isinstance(state, dict):
            raise TypeError(f"state_dict is a {type(state).__name__}, not a dict")
        predictor.load_state_dict(state)
        bundle = PredictorBundle(
            predictor=predictor.eval(),
            sampler=SamplerConfig.from_dict(payload["sampler"], renamed=version < 2),
            tap=None if kind == "epd" else str(payload["tap"]),
            checkpoint_sha256=str(payload["checkpoint_sha256"]),
            training=dict(payload.get("training") or {}),
            model_sha256=_optional_sha(payload, "model_sha256", path),
        )
    except AmedError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        reason = " ".join(str(e).split())
        reason = reason if len(reason) <= 200 else reason[:197] + "..."
        raise AmedError(f"{path}: malformed predictor file: {type(e).__name__}: {reason}") from None
    _check_kind(path, bundle, kind)
    bad = [k for k, v in predictor.state_dict().items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise AmedError(
            f"{path} has non-finite (NaN/inf) weights in {bad[0]!r}: distillation diverged or the file is damaged"
        )
    if not allow_mismatch:
        _check_binding(path, bundle, model_sha256, checkpoint_sha256)
    return bundle


def _check_binding(
    path: str | os.PathLike, bundle: PredictorBundle, model_sha256: str | None, checkpoint_sha256: str | None
) -> None:
    if model_sha256 is not None and bundle.model_sha256 is not None:
        if bundle.model_sha256 != model_sha256:
            raise AmedError(
                f"{path} was distilled for checkpoint model sha256 {bundle.model_sha256[:12]}..., "
                f"but this checkpoint's model is {model_sha256[:12]}...; {MISMATCH_HINT}"
            )
    elif checkpoint_sha256 is not None:
        if bundle.checkpoint_sha256 != checkpoint_sha256:
            raise AmedError(
                f"{path} was distilled for checkpoint file sha256 {bundle.checkpoint_sha256[:12]}..., but "
                f"this checkpoint file is {checkpoint_sha256[:12]}...; {MISMATCH_HINT}"
            )
    elif model_sha256 is not None:
        raise AmedError(
            f"{path} records only the checkpoint file it was distilled for (sha256 {bundle.checkpoint_sha256[:12]}...)"
            f", not a model hash, so it cannot be checked against this model; {MISMATCH_HINT}"
        )
