"""Safe loading of official EDM snapshot pickles (``network-snapshot-*.pkl``, ``edm-*.pkl``).

Unpickling those files the normal way executes the network source embedded in them (EDM's
persistence module) and runs ``torch.load(weights_only=False)`` on every tensor storage: two ways
for a downloaded file to run arbitrary code. This loader never imports or executes anything from the
file. Its unpickler resolves only a short allow-list of globals, each to an inert replacement:

- ``torch_utils.persistence._reconstruct_persistent_obj`` builds a :class:`PersistentRecord`
  (class name, constructor kwargs, instance state) and does NOT execute the embedded ``module_src``;
- ``torch.storage._load_from_bytes`` loads the storage with ``torch.load(weights_only=True)``;
- ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` / ``_rebuild_parameter_with_state``
  rebuild plain tensors after bounds-checking size/stride against the storage (``torch.Size`` ->
  tuple of ints);
- plainly pickled ``torch.nn.modules.*`` classes (ModuleDict, ModuleList, ...) and
  ``dnnlib.util.EasyDict`` become inert containers;
- numpy scalars/dtypes (``numpy.core`` and ``numpy._core``) become plain Python numbers;
- ``collections.OrderedDict``, ``builtins.set``/``frozenset`` and ``_codecs.encode`` (latin-1 only,
  how protocol-2 pickles spell ``bytes``).

Every other global raises :class:`AmedError` before anything is called. Before unpickling, one scan
of the opcodes refuses memo indices and lengths that the file cannot back, so a corrupt number cannot
make the C unpickler allocate gigabytes. The network's state dict is then rebuilt by walking the inert
records exactly as ``nn.Module.state_dict`` would.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import io
import math
import mmap
import os
import pickle
import pickletools
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from amed_deploy import __version__
from amed_deploy.checkpoint.format import ZIP_MAGIC, Checkpoint, plain_json, torch_error_reason
from amed_deploy.errors import AmedError
from amed_deploy.files import check_input_file, file_sha256

__all__ = [
    "ALLOWED_GLOBALS",
    "InertModule",
    "PersistentRecord",
    "load_edm_snapshot",
    "record_state_dict",
    "safe_unpickle",
]

_MAX_DEPTH = 64  # module nesting; EDM networks are < 10 deep
_MAX_MODULES = 100_000  # module visits; EDM networks have a few hundred (bounds shared-child blow-ups)


def _short(x: Any, limit: int = 60) -> str:
    """repr() for error messages: one line and bounded, whatever a hostile file puts there."""
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class PersistentRecord:
    """What ``_reconstruct_persistent_obj(meta)`` would have built, kept as data instead of executed."""

    class_name: str
    init_kwargs: dict[str, Any]
    state: dict[str, Any]
    init_args: tuple = ()
    version: Any = None
    source_sha256: str = ""  # sha256 of the embedded module_src, for provenance only


class InertModule:
    """Stand-in for a plainly pickled ``torch.nn`` class (e.g. ModuleDict): keeps its ``__dict__``, runs nothing."""

    torch_class = "torch.nn.Module"

    def __new__(cls, *args: Any, **kwargs: Any) -> InertModule:
        obj = object.__new__(cls)
        obj.state = {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise AmedError(f"pickled {self.torch_class} has a state of type {type(state).__name__}, not a dict")
        self.state = state

    def __repr__(self) -> str:
        return f"InertModule({self.torch_class})"


class _InertEasyDict(dict):
    """Replacement for ``dnnlib.util.EasyDict``: a plain dict (no attribute magic, no dnnlib import)."""


class _DTypeSpec:
    """Replacement for ``numpy.dtype`` during unpickling: remembers the type code, builds nothing."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = True) -> None:
        if not isinstance(spec, str):
            raise AmedError(f"numpy dtype spec {_short(spec)} is not a string")
        self.spec = spec
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) >= 2 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]
        else:
            raise AmedError(f"unexpected numpy dtype state {_short(state)}")


# numpy type code -> struct format (numeric scalars only; anything else is refused)
_NUMPY_SCALAR_FORMATS = {
    "b1": "?",
    "i1": "b",
    "i2": "h",
    "i4": "i",
    "i8": "q",
    "u1": "B",
    "u2": "H",
    "u4": "I",
    "u8": "Q",
    "f2": "e",
    "f4": "f",
    "f8": "d",
}


def _numpy_scalar(dtype: Any, data: Any = None) -> bool | int | float | complex:
    """Decode a pickled numpy scalar into the equivalent Python number (e.g. EDM's ``np.sqrt(0.5)``)."""
    if not isinstance(dtype, _DTypeSpec):
        raise AmedError("numpy scalar with an unexpected dtype object")
    if isinstance(data, str):  # protocol-0/Python-2 pickles
        data = data.encode("latin-1")
    if not isinstance(data, bytes):
        raise AmedError("numpy scalar without a byte payload")
    order = {">": ">", "=": "="}.get(dtype.byteorder, "<")
    spec = dtype.spec
    if spec in ("c8", "c16"):
        part = "f" if spec == "c8" else "d"
        try:
            re_, im = struct.unpack(order + part * 2, data)
        except struct.error as e:
            raise AmedError(f"bad numpy {spec} scalar payload: {e}") from None
        return complex(re_, im)
    fmt = _NUMPY_SCALAR_FORMATS.get(spec)
    if fmt is None:
        raise AmedError(f"numpy scalar of dtype {_short(spec)} is not supported (only bool/int/uint/float/complex)")
    try:
        (value,) = struct.unpack(order + fmt, data)
    except struct.error as e:
        raise AmedError(f"bad numpy {spec} scalar payload: {e}") from None
    return value


def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes; no other codec is looked up."""
    if not isinstance(text, str) or not isinstance(encoding, str):
        raise AmedError("_codecs.encode called with unexpected arguments")
    if encoding.lower() not in _LATIN1:
        raise AmedError(f"_codecs.encode with encoding {_short(encoding)} is not allowed (only latin-1)")
    return text.encode("latin-1")


_LATIN1 = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"}


class _Refused(AmedError):
    """Raised while unpickling for content that is refused on purpose (reported as 'refusing to load')."""


def _load_storage(data: Any) -> torch.storage.TypedStorage:
    """Replacement for ``torch.storage._load_from_bytes``: the same payload, but weights-only."""
    if not isinstance(data, (bytes, bytearray)):
        raise AmedError("tensor storage payload is not bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            storage = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise _Refused(
            f"a tensor storage holds more than plain weights (torch.load(weights_only=True) refused it: "
            f"{torch_error_reason(e)})"
        ) from None
    except Exception as e:
        raise AmedError(f"a tensor storage is corrupt ({type(e).__name__}: {torch_error_reason(e)})") from None
    if not isinstance(storage, torch.storage.TypedStorage):
        raise AmedError(f"a tensor storage payload decoded to {type(storage).__name__}, not a typed storage")
    nbytes = storage._untyped_storage.nbytes()
    if nbytes > len(data):  # torch checks this today; the view check in _rebuild_tensor relies on it
        raise AmedError(f"a tensor storage claims {nbytes} bytes but its payload has only {len(data)}")
    return storage


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _rebuild_tensor(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    """Replacement for ``torch._utils._rebuild_tensor_v2`` that checks the view fits in its storage.

    ``Tensor.set_`` does not bounds-check, so a crafted size/stride would read past the buffer. A view
    with more elements than its storage (stride 0 or overlapping) is refused too: no state dict holds
    one, and copying it (hashing, saving, the finite check) would allocate its element count, not the
    file's bytes. Hooks and metadata are ignored: the result is a plain, grad-free tensor.
    """
    if not isinstance(storage, torch.storage.TypedStorage):
        raise AmedError("tensor rebuilt from something that is not a typed storage")
    dtype, untyped = storage.dtype, storage._untyped_storage
    if not _is_int(storage_offset) or storage_offset < 0:
        raise AmedError(f"bad tensor storage offset {_short(storage_offset)}")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)) or len(size) != len(stride):
        raise AmedError("bad tensor size/stride")
    if not all(_is_int(s) and s >= 0 for s in size) or not all(_is_int(s) and s >= 0 for s in stride):
        raise AmedError(f"bad tensor size {_short(size)} / stride {_short(stride)}")
    available = untyped.nbytes() // dtype.itemsize
    numel = math.prod(size)
    if numel > 0:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= available:
            raise AmedError(
                f"tensor of size {_short(list(size))} (stride {_short(list(stride))}, offset {storage_offset}) "
                f"does not fit in its storage of {available} elements"
            )
    if numel > available:
        raise AmedError(
            f"tensor of size {_short(list(size))} has {numel} elements but its storage holds only {available}"
        )
    t = torch.empty((0,), dtype=dtype)
    t.set_(untyped, storage_offset, tuple(size), tuple(stride))
    return t


def _torch_size(dims: Any = ()) -> tuple[int, ...]:
    """Replacement for ``torch.Size`` (older torch pickled tensor sizes with it): a tuple of ints."""
    if not isinstance(dims, (tuple, list)) or not all(_is_int(d) for d in dims):
        raise AmedError(f"bad torch.Size {_short(dims)}")
    return tuple(dims)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, state: Any = None):
    """Replacement for ``torch._utils._rebuild_parameter[_with_state]``: the plain tensor, nothing set on it."""
    if not isinstance(data, torch.Tensor):
        raise AmedError("parameter rebuilt from something that is not a tensor")
    return data


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    """Replacement for EDM's persistence reconstructor: record the object, never exec ``module_src``."""
    if not isinstance(meta, dict):
        raise AmedError("persistent object without a meta dict")
    if meta.get("type") != "class":
        raise AmedError(f"persistent object of type {_short(meta.get('type'))} (only 'class' is supported)")
    class_name = meta.get("class_name")
    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise AmedError(f"persistent object with bad class_name {_short(class_name)}")
    state = meta.get("state")
    if state is None:
        state = {}
    if not isinstance(state, dict):
        raise AmedError(f"persistent object {class_name} has a state of type {type(state).__name__}")
    src = meta.get("module_src", "")
    src_sha = hashlib.sha256(src.encode("utf-8", "replace")).hexdigest() if isinstance(src, str) else ""
    init_kwargs = state.get("_init_kwargs", {})
    init_args = state.get("_init_args", ())
    if not isinstance(init_kwargs, dict):
        raise AmedError(f"persistent object {class_name} has non-dict _init_kwargs")
    if not isinstance(init_args, (tuple, list)):
        raise AmedError(f"persistent object {class_name} has non-sequence _init_args")
    return PersistentRecord(
        class_name=class_name,
        init_kwargs=dict(init_kwargs),
        state=state,
        init_args=tuple(init_args),
        version=meta.get("version"),
        source_sha256=src_sha,
    )


_inert_module_classes: dict[str, type[InertModule]] = {}


def _inert_module_class(module: str, name: str) -> type[InertModule]:
    key = f"{module}.{name}"
    if key not in _inert_module_classes:
        _inert_module_classes[key] = type(f"Inert{name}", (InertModule,), {"torch_class": key})
    return _inert_module_classes[key]


# (module, name) -> replacement. Only these globals can be named by a snapshot pickle.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): _torch_size,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_encode,
    ("dnnlib.util", "EasyDict"): _InertEasyDict,
    ("numpy", "dtype"): _DTypeSpec,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}
# Plus any class under torch.nn.modules.* (ModuleDict, ModuleList, ...), resolved to an InertModule subclass.
_TORCH_NN_MODULE = re.compile(r"torch\.nn\.modules\.[a-z_][a-z0-9_]*")
_CLASS_NAME = re.compile(r"[A-Z][A-Za-z0-9_]*")


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        replacement = ALLOWED_GLOBALS.get((module, name))
        if replacement is not None:
            return replacement
        if _TORCH_NN_MODULE.fullmatch(module) and _CLASS_NAME.fullmatch(name):
            return _inert_module_class(module, name)
        raise _Refused(f"global {module}.{name} is not on the allow-list")

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("it uses pickle persistent IDs, which EDM snapshots never do")


class _MMapReader:
    """The file interface pickle.Unpickler needs, over a memory map (reads never exceed what exists)."""

    def __init__(self, mm: mmap.mmap) -> None:
        self._mm = mm

    def tell(self) -> int:
        return self._mm.tell()

    def seek(self, pos: int) -> int:
        self._mm.seek(pos)
        return pos

    def read(self, n: int = -1) -> bytes:
        return self._mm.read(n)

    def readline(self) -> bytes:
        return self._mm.readline()

    def readinto(self, buf: Any) -> int:
        data = self._mm.read(len(buf))
        buf[: len(data)] = data
        return len(data)


_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _check_memo_indices(file: Any) -> None:
    """Refuse memo indices that no pickler writes, before the C unpickler acts on them.

    ``_pickle`` grows its memo array to twice a PUT's index and zero-fills it, so a single corrupt
    LONG_BINPUT (a 4-byte index) makes it touch up to 64 GB before anything fails. Picklers number
    the memo 0, 1, 2, ...: an index past the next free slot is corrupt. ``genops`` also reads every
    counted string and frame, so a length past the end of the data fails here, before the unpickler
    allocates a buffer of that length.
    """
    stored = 0
    for op, arg, pos in pickletools.genops(file):
        if op.name == "MEMOIZE":
            stored += 1
        elif op.name in _MEMO_PUTS:
            if arg > stored:
                raise AmedError(f"memo index {arg} at byte {pos} is past the {stored} objects stored before it")
            stored = max(stored, arg + 1)


def safe_unpickle(file: Any, what: str = "pickle") -> Any:
    """Unpickle from a seekable binary file object with the allow-list; any failure becomes an AmedError."""
    try:
        start = file.tell()
        _check_memo_indices(file)
        file.seek(start)
        return _SafeUnpickler(file).load()
    except _Refused as e:
        raise AmedError(f"refusing to load {what}: {e}") from None
    except AmedError as e:
        raise AmedError(f"cannot load {what}: {e}") from None
    except EOFError:
        raise AmedError(f"cannot load {what}: the file is truncated (pickle data ended early)") from None
    except (MemoryError, RecursionError) as e:
        raise AmedError(f"cannot load {what}: corrupt pickle ({type(e).__name__})") from None
    except Exception as e:  # UnpicklingError, ValueError, ...: bad input, whatever the library says
        reason = " ".join(str(e).split())[:200]
        raise AmedError(
            f"cannot load {what}: not a valid pickle, or truncated/corrupt ({type(e).__name__}: {reason})"
        ) from None


def _module_state(obj: Any, where: str) -> dict[str, Any]:
    if isinstance(obj, PersistentRecord):
        state = obj.state
    elif isinstance(obj, InertModule):
        state = obj.state
    else:
        raise AmedError(f"{where} is a {type(obj).__name__}, not a pickled network module")
    if not isinstance(state.get("_parameters"), dict):
        name = obj.class_name if isinstance(obj, PersistentRecord) else obj.torch_class
        raise AmedError(f"{where} ({name}) is not a torch.nn.Module (no _parameters)")
    return state


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name or "." in name:
        raise AmedError(f"bad attribute name {_short(name)} in {where}")
    return name


def record_state_dict(root: PersistentRecord | InertModule) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rebuild ``state_dict()`` (and the list of buffer keys) from an inert module record.

    Order matches ``nn.Module.state_dict``: own parameters, own persistent buffers, then children
    in registration order, with dotted prefixes.
    """
    out: dict[str, torch.Tensor] = {}
    buffers: list[str] = []
    active: set[int] = set()
    visits = 0

    def visit(obj: Any, prefix: str, depth: int) -> None:
        nonlocal visits
        where = prefix.rstrip(".") or "the network"
        visits += 1
        if depth > _MAX_DEPTH or visits > _MAX_MODULES:
            raise AmedError(f"module tree deeper than {_MAX_DEPTH} or larger than {_MAX_MODULES} modules at {where}")
        if id(obj) in active:
            raise AmedError(f"module cycle at {where}")
        state = _module_state(obj, where)
        active.add(id(obj))
        params = state.get("_parameters") or {}
        bufs = state.get("_buffers") or {}
        non_persistent = state.get("_non_persistent_buffers_set") or set()
        children = state.get("_modules") or {}
        for what, d in (("_parameters", params), ("_buffers", bufs), ("_modules", children)):
            if not isinstance(d, dict):
                raise AmedError(f"{where}: {what} is a {type(d).__name__}, not a dict")
        if not isinstance(non_persistent, (set, frozenset, list, tuple)):
            raise AmedError(f"{where}: _non_persistent_buffers_set is not a set")
        for kind, d in (("parameter", params), ("buffer", bufs)):
            for name, value in d.items():
                _check_name(name, where)
                if value is None or (kind == "buffer" and name in non_persistent):
                    continue
                if not isinstance(value, torch.Tensor):
                    raise AmedError(f"{kind} {prefix}{name} is a {type(value).__name__}, not a tensor")
                key = prefix + name
                if key in out:
                    raise AmedError(f"duplicate state-dict key {key}")
                out[key] = value.detach()
                if kind == "buffer":
                    buffers.append(key)
        for name, child in children.items():
            _check_name(name, where)
            if child is not None:
                visit(child, f"{prefix}{name}.", depth + 1)
        active.discard(id(obj))

    visit(root, "", 0)
    return out, buffers


# Positional constructor args shared by every EDM preconditioner (only used if a network was
# built with positional args, which EDM's training code never does).
_PRECOND_POSITIONAL = ("img_resolution", "img_channels", "label_dim", "use_fp16")


def _network_kwargs(rec: PersistentRecord) -> dict[str, Any]:
    kwargs = plain_json(rec.init_kwargs, f"{rec.class_name} constructor kwargs")
    if rec.init_args:
        if len(rec.init_args) > len(_PRECOND_POSITIONAL) or not rec.class_name.endswith("Precond"):
            raise AmedError(
                f"{rec.class_name} was constructed with {len(rec.init_args)} positional arguments; "
                "only keyword construction (as EDM's training code does) is supported"
            )
        for name, value in zip(_PRECOND_POSITIONAL, rec.init_args, strict=False):
            if name in kwargs:
                raise AmedError(f"{rec.class_name}: {name} given both positionally and by keyword")
            kwargs[name] = plain_json(value, f"{rec.class_name} argument {name}")
    return kwargs


def load_edm_snapshot(path: str | os.PathLike) -> Checkpoint:
    """Load the ``ema`` network of an official EDM snapshot pickle without executing anything in it."""
    path = Path(path)
    what = str(path)
    check_input_file(path, "an EDM snapshot pickle")
    with open(path, "rb") as f:
        if f.read(4) == ZIP_MAGIC:
            raise AmedError(
                f"{what} is a torch.save zip archive, not an EDM snapshot pickle; load it with load_checkpoint"
            )
        # Read through a memory map: a multi-GB snapshot is not copied into memory first, and no read
        # goes past the end of the file (declared lengths are checked by _check_memo_indices' scan).
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            data = safe_unpickle(_MMapReader(mm), what)

    if not isinstance(data, dict) or "ema" not in data:
        kind = f"a dict with keys {sorted(map(str, data))[:8]}" if isinstance(data, dict) else type(data).__name__
        raise AmedError(f"{what} is not an EDM snapshot: expected a dict with an 'ema' network, found {kind}")
    ema = data["ema"]
    if not isinstance(ema, PersistentRecord):
        raise AmedError(
            f"{what} is not an EDM snapshot: 'ema' is a {type(ema).__name__}, "
            "not a network saved by EDM's persistence module"
        )
    state_dict, buffer_keys = record_state_dict(ema)
    if not state_dict:
        raise AmedError(f"{what}: the 'ema' network has no parameters")
    kwargs = _network_kwargs(ema)

    child = (ema.state.get("_modules") or {}).get("model")
    edm_meta: dict[str, Any] = {
        "model_class": child.class_name if isinstance(child, PersistentRecord) else None,
        "persistence_version": ema.version if _is_int(ema.version) else None,
        "module_src_sha256": ema.source_sha256,
    }
    try:
        edm_meta["dataset_kwargs"] = plain_json(data.get("dataset_kwargs"), "dataset_kwargs")
    except AmedError:
        edm_meta["dataset_kwargs"] = None
    metadata = {
        "source": path.name,
        "source_sha256": file_sha256(path),
        "source_format": "edm-snapshot-pickle",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "amed_deploy_version": __version__,
        "buffer_keys": buffer_keys,
        "edm": edm_meta,
    }
    return Checkpoint(
        network_class=ema.class_name,
        network_kwargs=kwargs,
        state_dict=state_dict,
        metadata=metadata,
    )
