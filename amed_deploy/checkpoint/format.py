"""The project's own checkpoint format: network class + kwargs + weights + provenance, validated.

An official EDM snapshot is a pickle that can execute code; once converted (see
:mod:`amed_deploy.checkpoint.edm_pickle`) every later step reads this format instead, which loads
without unpickling arbitrary objects:

- ``*.pt``: ``torch.save`` of ``{'format', 'format_version', 'network_class', 'network_kwargs',
  'state_dict', 'metadata', 'content_sha256'}``, read back with ``torch.load(weights_only=True)``;
- ``*.safetensors``: the tensors, plus one metadata entry ``'amed_deploy'`` holding the JSON of the
  same header fields (and the key order). Optionally stored in fp16/bf16 to keep bundled models small.

``content_sha256`` covers the header and every tensor's bytes, so a truncated or bit-flipped file is
reported instead of silently producing a different model.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from amed_deploy import __version__
from amed_deploy.errors import AmedError, first_line
from amed_deploy.files import atomic_open, atomic_write_with
from amed_deploy.graph import PRECISION_DTYPES, dtype_name
from amed_deploy.records import TAG, check_stamp, stamp

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ZIP_MAGIC",
    "Checkpoint",
    "check_state_dict",
    "model_sha256",
    "parse_dtype",
    "pickled_global",
    "plain_json",
    "read_checkpoint",
    "save_checkpoint",
    "torch_error_reason",
]

FORMAT = "amed-deploy/edm-checkpoint"
FORMAT_VERSION = 1
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip container
_SAFETENSORS_KEY = "amed_deploy"
# the precisions' names, torch's own names ("float16"), and "half"
_SAVE_DTYPES = {**PRECISION_DTYPES, **{dtype_name(d): d for d in PRECISION_DTYPES.values()}, "half": torch.float16}


@dataclass
class Checkpoint:
    """An EDM-style network: how to construct it and its weights, plus JSON-able provenance."""

    network_class: str
    network_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)

    def num_parameters(self) -> int:
        """Trainable-parameter count (buffers listed in metadata['buffer_keys'] excluded, as EDM counts)."""
        buffers = set(self.metadata.get("buffer_keys") or ())
        return sum(t.numel() for k, t in self.state_dict.items() if k not in buffers)


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Accept 'fp32'/'fp16'/'bf16' (or a torch dtype) for storage; None keeps tensors as they are."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if dtype is not None and dtype not in set(_SAVE_DTYPES.values()):
            raise AmedError(f"unsupported storage dtype {dtype}; use float32, float16 or bfloat16")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _SAVE_DTYPES:
        raise AmedError(f"unsupported dtype {dtype!r}; use one of fp32, fp16, bf16")
    return _SAVE_DTYPES[key]


# ---------------------------------------------------------------- validation helpers


def _short(x: Any, limit: int = 60) -> str:
    """repr() for error messages: one line and bounded, whatever a damaged file holds."""
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Real kwargs and metadata nest a few levels; a bound far above that keeps a hostile file from
# exhausting the interpreter stack here or in json.dumps (which recurses too).
MAX_JSON_DEPTH = 64


def plain_json(obj: Any, where: str) -> Any:
    """A JSON-able copy of `obj` (tuples become lists); non-string keys, other types and nesting
    deeper than MAX_JSON_DEPTH are errors."""
    try:
        return _plain_json(obj, where, where, 0)
    except RecursionError:  # only reachable if the caller was already deep in the stack
        raise AmedError(f"{where} is nested too deeply") from None


def _plain_json(obj: Any, where: str, top: str, depth: int) -> Any:
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if depth >= MAX_JSON_DEPTH:
        raise AmedError(f"{top} is nested too deeply (more than {MAX_JSON_DEPTH} levels of lists/dicts)")
    if isinstance(obj, dict):  # also EasyDict / OrderedDict from unpickled kwargs
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise AmedError(f"{where} has a non-string key {_short(k)} ({type(k).__name__}); keys must be strings")
            out[k] = _plain_json(v, f"{where}.{k}", top, depth + 1)
        return out
    if isinstance(obj, (list, tuple)):
        return [_plain_json(v, f"{where}[{i}]", top, depth + 1) for i, v in enumerate(obj)]
    raise AmedError(f"{where} is a {type(obj).__name__}; only JSON-able values (numbers, strings, lists, dicts)")


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True, ensure_ascii=True)


def check_state_dict(sd: Any, what: str) -> dict[str, torch.Tensor]:
    """The state dict as a str -> tensor dict; anything else (a damaged file) is one AmedError."""
    if not isinstance(sd, dict):
        raise AmedError(f"{what}: state_dict is a {type(sd).__name__}, not a dict of tensors")
    if not sd:
        raise AmedError(f"{what}: state_dict is empty")
    out = {}
    for k, v in sd.items():
        if not isinstance(k, str) or not k:
            raise AmedError(f"{what}: state_dict has a non-string key {_short(k)} ({type(k).__name__})")
        if not isinstance(v, torch.Tensor):
            raise AmedError(f"{what}: state_dict[{_short(k)}] is a {type(v).__name__}, not a tensor")
        out[k] = v
    return out


def _header(ckpt: Checkpoint, what: str) -> dict[str, Any]:
    if not isinstance(ckpt.network_class, str) or not ckpt.network_class.isidentifier():
        raise AmedError(f"{what}: network_class {_short(ckpt.network_class)} is not a class name")
    if not isinstance(ckpt.network_kwargs, dict):
        raise AmedError(f"{what}: network_kwargs is a {type(ckpt.network_kwargs).__name__}, not a dict")
    if not isinstance(ckpt.metadata, dict):
        raise AmedError(f"{what}: metadata is a {type(ckpt.metadata).__name__}, not a dict")
    return {
        **stamp(FORMAT, FORMAT_VERSION),
        "network_class": ckpt.network_class,
        "network_kwargs": plain_json(ckpt.network_kwargs, "network_kwargs"),
        "metadata": plain_json(ckpt.metadata, "metadata"),
    }


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    # a fresh dense buffer: size-1 dims of a (possibly corrupted) tensor may carry stride 0
    flat = torch.empty(t.numel(), dtype=t.dtype).copy_(t.detach().cpu().reshape(-1))
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def _content_digest(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    h.update(_canonical_json(header).encode())
    for key in sorted(tensors):
        t = tensors[key]
        h.update(b"\n" + _canonical_json([key, str(t.dtype), list(t.shape)]).encode() + b"\n")
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _prepare_tensors(sd: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors that own their storage (safetensors refuses shared memory)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, t in sd.items():
        t = t.detach().cpu()
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            cast = t.to(dtype)
            if bool((torch.isfinite(t) & ~torch.isfinite(cast)).any()):
                raise AmedError(f"tensor {k} has values outside the range of {dtype}; save it as fp32 instead")
            t = cast
        storage = t.untyped_storage()
        whole = t.is_contiguous() and t.storage_offset() == 0 and storage.nbytes() == t.numel() * t.element_size()
        if not whole or storage.data_ptr() in seen:
            t = t.contiguous().clone()
        if t.numel():
            seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


def _with_default_metadata(ckpt: Checkpoint) -> Checkpoint:
    meta = dict(ckpt.metadata) if isinstance(ckpt.metadata, dict) else ckpt.metadata
    if isinstance(meta, dict):
        meta.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        meta.setdefault("amed_deploy_version", __version__)
    return Checkpoint(ckpt.network_class, ckpt.network_kwargs, ckpt.state_dict, meta)


# ---------------------------------------------------------------- save


def save_checkpoint(
    ckpt: Checkpoint, path: str | os.PathLike, *, dtype: str | torch.dtype | None = None, overwrite: bool = True
) -> None:
    """Write `ckpt` atomically: ``.safetensors`` when the name says so, otherwise a ``torch.save`` file.

    `dtype` (e.g. 'fp16') casts floating tensors for storage; loading casts back to fp32 by default.
    `overwrite=False` refuses an existing `path` (the CLI without --force) instead of replacing it.
    """
    path = Path(path)
    what = str(path)
    store_dtype = parse_dtype(dtype)
    ckpt = _with_default_metadata(ckpt)
    header = _header(ckpt, what)
    tensors = _prepare_tensors(check_state_dict(ckpt.state_dict, what), store_dtype)
    digest = _content_digest(header, tensors)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        stored = {**header, "order": list(tensors), "content_sha256": digest}
        meta = {_SAFETENSORS_KEY: json.dumps(stored, separators=(",", ":"), allow_nan=True)}
        atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata=meta), overwrite=overwrite)
    else:
        payload = {**header, "state_dict": tensors, "content_sha256": digest}
        with atomic_open(path, overwrite=overwrite) as f:
            torch.save(payload, f)


# ---------------------------------------------------------------- read


_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def torch_error_reason(e: BaseException, limit: int = 200) -> str:
    """The informative part of a (often many-paragraph) torch.load error, on one line."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", str(e))]
    useful = [p for p in paragraphs if p and not p.startswith(_TORCH_BOILERPLATE)]
    reason = useful[0] if useful else (paragraphs[0] if paragraphs and paragraphs[0] else type(e).__name__)
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def pickled_global(e: BaseException) -> str | None:
    """The class/function named in torch.load(weights_only=True)'s 'Unsupported global' refusal, if any."""
    match = re.search(r"Unsupported global: GLOBAL ([A-Za-z_][\w.]*)", str(e))
    return match.group(1) if match else None


def _load_pt(path: Path, what: str) -> dict[str, Any]:
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        name = pickled_global(e)
        if name is not None:
            raise AmedError(
                f"{what} holds a pickled Python object ({name}), e.g. a whole model saved with torch.save(model): "
                "it cannot be loaded without running its code. Save a state dict instead: "
                "save_checkpoint(Checkpoint(network_class, network_kwargs, model.state_dict(), {}), 'edm.pt'); "
                "convert EDM snapshots with `amed-deploy convert`"
            ) from None
        raise AmedError(
            f"cannot load {what}: it holds more than plain weights or is corrupt "
            f"(torch.load(weights_only=True) refused it: {torch_error_reason(e)}). A whole pickled model "
            "(torch.save(model)) is not supported; convert EDM snapshots with `amed-deploy convert`"
        ) from None
    except Exception as e:
        raise AmedError(f"cannot load {what}: truncated or corrupt torch file ({torch_error_reason(e)})") from None
    if not isinstance(obj, dict):
        raise AmedError(f"{what} is not an amed-deploy checkpoint: it holds a {type(obj).__name__}, not a dict")
    if TAG not in obj:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise AmedError(
                f"{what} is a plain state dict ({len(obj)} tensors) without the network class and kwargs; "
                "convert the original EDM snapshot with `amed-deploy convert SNAPSHOT.pkl --out edm.pt`, or wrap "
                "it: save_checkpoint(Checkpoint(network_class, network_kwargs, state_dict, {}), 'edm.pt')"
            )
        keys = sorted(str(k) for k in obj)[:8]
        raise AmedError(f"{what} is not an amed-deploy checkpoint (no {TAG!r} tag; keys: {keys})")
    return obj


def _load_safetensors(path: Path, what: str) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # safetensors may raise a Rust panic (a BaseException) on bad input
        raise AmedError(f"cannot load {what}: truncated or corrupt safetensors file ({first_line(e)})") from None
    if _SAFETENSORS_KEY not in raw_meta:
        raise AmedError(
            f"{what} is a plain safetensors file ({len(tensors)} tensors) without amed-deploy metadata "
            "(network class and kwargs); save it with amed_deploy.checkpoint.format.save_checkpoint"
        )
    try:
        header = json.loads(raw_meta[_SAFETENSORS_KEY])
    except RecursionError:
        raise AmedError(f"cannot load {what}: its amed-deploy metadata is nested too deeply") from None
    except ValueError as e:
        raise AmedError(f"cannot load {what}: corrupt amed-deploy metadata ({e})") from None
    if not isinstance(header, dict):
        raise AmedError(f"cannot load {what}: corrupt amed-deploy metadata (not a JSON object)")
    order = header.pop("order", None)  # always written: its absence means a damaged header
    if not (isinstance(order, list) and sorted(order) == sorted(tensors)):
        raise AmedError(f"cannot load {what}: corrupt amed-deploy metadata (key order missing or not the tensors')")
    tensors = {k: tensors[k] for k in order}
    return {**header, "state_dict": tensors}


def _from_payload(obj: dict[str, Any], what: str) -> Checkpoint:
    check_stamp(obj, FORMAT, FORMAT_VERSION, what, "an amed-deploy checkpoint")
    for key in ("network_class", "network_kwargs", "state_dict", "metadata", "content_sha256"):
        if key not in obj:
            raise AmedError(f"{what} is missing the {key!r} field")
    if not isinstance(obj["network_kwargs"], dict) or not isinstance(obj["metadata"], dict):
        raise AmedError(f"{what}: network_kwargs and metadata must be dicts")
    ckpt = Checkpoint(
        network_class=obj["network_class"],
        network_kwargs=obj["network_kwargs"],
        state_dict=check_state_dict(obj["state_dict"], what),
        metadata=obj["metadata"],
    )
    header = _header(ckpt, what)
    if _content_digest(header, ckpt.state_dict) != obj["content_sha256"]:
        raise AmedError(f"{what} is corrupt: its content checksum does not match (damaged or edited file)")
    ckpt.network_kwargs = header["network_kwargs"]
    ckpt.metadata = header["metadata"]
    return ckpt


def read_checkpoint(path: Path, container: str) -> Checkpoint:
    """Read and verify an existing file of this format; `container` ('pt' or 'safetensors') is what the
    file's first bytes showed, so a misnamed file is still read by the right reader."""
    what = str(path)
    payload = _load_safetensors(path, what) if container == "safetensors" else _load_pt(path, what)
    return _from_payload(payload, what)


# ---------------------------------------------------------------- model


def model_sha256(ckpt: Checkpoint) -> str:
    """sha256 of the model itself, not of its file: the short class name, the kwargs (as plain JSON)
    and every tensor in key order, floating tensors as float32. fp16/bf16 -> fp32 is exact, so the
    same weights stored as .pt or .safetensors, in fp32 or fp16, hash the same; metadata is excluded.
    Predictor files are bound to this, so converting a checkpoint does not orphan its predictors."""
    if not isinstance(ckpt.network_class, str):
        raise AmedError(f"network_class {_short(ckpt.network_class)} is not a class name")
    short = ckpt.network_class.rsplit(".", 1)[-1]
    tensors = check_state_dict(ckpt.state_dict, "model")
    h = hashlib.sha256()
    h.update(_canonical_json([short, plain_json(ckpt.network_kwargs, "network_kwargs")]).encode())
    for key in sorted(tensors):
        t = tensors[key]
        kind = "float" if t.is_floating_point() else str(t.dtype).removeprefix("torch.")
        h.update(b"\n" + _canonical_json([key, kind, list(t.shape)]).encode() + b"\n")
        h.update(_tensor_bytes(t.to(torch.float32) if t.is_floating_point() else t))
    return h.hexdigest()
