"""The safe EDM snapshot loader: recovers weights/kwargs exactly and never executes anything.

Snapshots are built here the way EDM's persistence module pickles them: every network class is a
REDUCE of ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` whose meta carries the
module source and the instance state; torch containers and tensors are pickled the normal way.
The embedded source, and every malicious payload, would create a marker file if it ever ran.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import subprocess
import sys
import tracemalloc
import types
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from amed_deploy.checkpoint.edm_pickle import (
    ALLOWED_GLOBALS,
    InertModule,
    PersistentRecord,
    load_edm_snapshot,
    record_state_dict,
    safe_unpickle,
)
from amed_deploy.errors import AmedError

# ------------------------------------------------------------------ building EDM-style pickles


def _reconstruct_persistent_obj(meta):  # only its name is pickled; it must never be called
    raise AssertionError("the stand-in reconstructor was called")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
_reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"


class EasyDict(dict):
    """Pickles as dnnlib.util.EasyDict."""


EasyDict.__module__ = "dnnlib.util"
EasyDict.__qualname__ = "EasyDict"


@contextlib.contextmanager
def _fake_edm_modules():
    """Make the EDM module names resolvable while pickling (pickle checks the global exists)."""
    torch_utils = types.ModuleType("torch_utils")
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    torch_utils.persistence = persistence
    dnnlib = types.ModuleType("dnnlib")
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = EasyDict
    dnnlib.util = util
    fake = {"torch_utils": torch_utils, "torch_utils.persistence": persistence, "dnnlib": dnnlib, "dnnlib.util": util}
    saved = {k: sys.modules.get(k) for k in fake}
    sys.modules.update(fake)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def evil_source(marker: Path) -> str:
    """Module source that would leave a marker if anyone executed it."""
    return f"open({str(marker)!r}, 'w').write('module_src was executed')\nclass EDMPrecond: pass\n"


class Persistent:
    """Pickles exactly like an instance of an EDM @persistent_class."""

    def __init__(self, class_name: str, state: dict, module_src: str = "", version: int = 6):
        self.class_name, self.state, self.module_src, self.version = class_name, state, module_src, version

    def __reduce__(self):
        meta = dict(
            type="class",
            version=self.version,
            module_src=self.module_src,
            class_name=self.class_name,
            state=self.state,
        )
        return (_reconstruct_persistent_obj, (meta,))


_CONTAINERS = (nn.ModuleDict, nn.ModuleList, nn.Sequential)


def surrogate(m: nn.Module, init_kwargs: dict | None = None, module_src: str = "", keep_plain=()) -> object:
    """A picklable stand-in for `m` shaped like an EDM network: persistent classes, torch containers.

    Modules whose type is in `keep_plain` are pickled as the real torch class (e.g. nn.Linear).
    """
    if isinstance(m, keep_plain):
        return m
    children = OrderedDict(
        (name, None if c is None else surrogate(c, module_src=module_src, keep_plain=keep_plain))
        for name, c in m._modules.items()
    )
    if isinstance(m, _CONTAINERS):
        c = type(m)()
        c.__dict__["_modules"] = children  # pickles as NEWOBJ(ModuleDict) + BUILD(__dict__)
        return c
    state = {
        "training": False,
        "_parameters": OrderedDict(m._parameters),
        "_buffers": OrderedDict(m._buffers),
        "_non_persistent_buffers_set": set(m._non_persistent_buffers_set),
        "_backward_pre_hooks": OrderedDict(),
        "_backward_hooks": OrderedDict(),
        "_forward_hooks": OrderedDict(),
        "_forward_pre_hooks": OrderedDict(),
        "_state_dict_hooks": OrderedDict(),
        "_load_state_dict_pre_hooks": OrderedDict(),
        "_modules": children,
        "_init_args": (),
        "_init_kwargs": dict(init_kwargs or {}),
    }
    for k, v in vars(m).items():
        if not k.startswith("_") and k not in state and isinstance(v, (bool, int, float, str)):
            state[k] = v
    return Persistent(type(m).__name__, state, module_src)


def snapshot_bytes(
    net: nn.Module,
    init_kwargs: dict,
    marker: Path | None = None,
    protocol: int = pickle.DEFAULT_PROTOCOL,
    keep_plain=(),
    extra: dict | None = None,
) -> bytes:
    """An EDM-snapshot-shaped pickle of `net` (ema) plus loss_fn, augment_pipe, dataset_kwargs."""
    src = evil_source(marker) if marker is not None else "class EDMPrecond: pass\n"
    data = {
        "ema": surrogate(net, init_kwargs, src, keep_plain),
        "loss_fn": Persistent(
            "EDMLoss", {"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5, "_init_args": (), "_init_kwargs": {}}, src
        ),
        "augment_pipe": None,
        "dataset_kwargs": EasyDict(class_name="training.dataset.ImageFolderDataset", path="x.zip", resolution=16),
        **(extra or {}),
    }
    with _fake_edm_modules():
        return pickle.dumps(data, protocol=protocol)


def write_snapshot(path: Path, net: nn.Module, init_kwargs: dict, **kw) -> Path:
    path.write_bytes(snapshot_bytes(net, init_kwargs, **kw))
    return path


class Block(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm0 = nn.GroupNorm(1, cin)
        self.conv0 = nn.Conv2d(cin, cout, 3, padding=1)
        self.register_buffer("resample_filter", torch.full((1, 1, 2, 2), 0.25))
        self.register_buffer("scratch", torch.zeros(3), persistent=False)  # not in the state dict
        self.skip_scale = float(np.sqrt(0.5))


class TinyNet(nn.Module):
    """Nested modules, ModuleDict/ModuleList children, None params, odd dtypes and strided buffers."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.map_noise = nn.Linear(4, 8, bias=False)  # registers bias=None
        self.enc = nn.ModuleDict({"16x16_conv": Block(3, 8), "8x8_block0": Block(8, 8)})
        self.dec = nn.ModuleList([Block(8, 3), nn.Linear(2, 2)])
        self.register_buffer("u", torch.linspace(0, 80, 5, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(7))
        self.register_buffer("mask", torch.tensor([True, False, True]))
        self.register_buffer("wt", torch.randn(3, 5, generator=g).t())  # non-contiguous
        self.w16 = nn.Parameter(torch.randn(6, generator=g).half())
        self.w16.note = "pickled via _rebuild_parameter_with_state"
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g).to(p.dtype))


TINY_KWARGS = {
    "img_resolution": 16,
    "img_channels": 3,
    "label_dim": 0,
    "model_type": "TinyNet",
    "channel_mult": (1, 2),
    "dropout": np.float64(0.13),
    "augment_dim": np.int64(9),
    "use_fp16": np.bool_(False),
    "sigma_max": float("inf"),
    "extra": EasyDict(a=1, b=[1.5, None]),
}
TINY_KWARGS_PLAIN = {
    "img_resolution": 16,
    "img_channels": 3,
    "label_dim": 0,
    "model_type": "TinyNet",
    "channel_mult": [1, 2],
    "dropout": 0.13,
    "augment_dim": 9,
    "use_fp16": False,
    "sigma_max": float("inf"),
    "extra": {"a": 1, "b": [1.5, None]},
}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    # fresh dense copies: size-1 dims may carry any stride (even 0), which view() rejects
    a, b = (torch.empty(t.numel(), dtype=t.dtype).copy_(t.reshape(-1)) for t in (a, b))
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def assert_same_state_dict(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for k in want:
        assert same_bits(got[k], want[k]), k


def persistent_buffers(net: nn.Module) -> list[str]:
    params = {k for k, _ in net.named_parameters()}
    return [k for k in net.state_dict() if k not in params]


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "embedded code was executed"


# ------------------------------------------------------------------ recovering weights and kwargs


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_recovers_weights_and_kwargs_bit_identically(tmp_path, marker, protocol):
    net = TinyNet()
    path = write_snapshot(tmp_path / "network-snapshot-000100.pkl", net, TINY_KWARGS, marker=marker, protocol=protocol)
    ckpt = load_edm_snapshot(path)
    assert ckpt.network_class == "TinyNet"
    assert ckpt.network_kwargs == TINY_KWARGS_PLAIN
    assert_same_state_dict(ckpt.state_dict, net.state_dict())
    assert "enc.16x16_conv.scratch" not in ckpt.state_dict
    assert ckpt.metadata["source"] == path.name
    assert ckpt.metadata["source_format"] == "edm-snapshot-pickle"
    assert len(ckpt.metadata["source_sha256"]) == 64
    assert ckpt.metadata["edm"]["dataset_kwargs"]["resolution"] == 16
    assert ckpt.metadata["buffer_keys"] == persistent_buffers(net)
    assert ckpt.num_parameters() == sum(p.numel() for p in net.parameters())


def test_numpy_core_spelling_is_accepted(tmp_path):
    """numpy < 2 pickles scalars under numpy.core.multiarray; protocol-2 GLOBALs are plain text lines."""
    raw = snapshot_bytes(TinyNet(), TINY_KWARGS, protocol=2)
    assert b"numpy._core.multiarray" in raw
    path = tmp_path / "old-numpy.pkl"
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert load_edm_snapshot(path).network_kwargs == TINY_KWARGS_PLAIN


def test_plainly_pickled_torch_modules_are_inert_records(tmp_path):
    net = TinyNet()
    path = write_snapshot(tmp_path / "s.pkl", net, {}, keep_plain=(nn.Linear,))
    assert b"torch.nn.modules.linear" in path.read_bytes()
    assert_same_state_dict(load_edm_snapshot(path).state_dict, net.state_dict())


def test_record_walk_matches_state_dict_order():
    net = TinyNet()
    with _fake_edm_modules():
        raw = pickle.dumps(surrogate(net, {"a": 1}))
    rec = safe_unpickle(io.BytesIO(raw))
    assert isinstance(rec, PersistentRecord) and rec.class_name == "TinyNet" and rec.init_kwargs == {"a": 1}
    assert isinstance(rec.state["_modules"]["enc"], InertModule)
    sd, buffers = record_state_dict(rec)
    assert_same_state_dict(sd, net.state_dict())
    assert buffers == persistent_buffers(net)


def test_torch_size_in_tensor_args(tmp_path):
    """Older torch versions pickled tensor sizes as torch.Size; that must work, and nothing else."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = torch.arange(6, dtype=torch.float32).storage()
    sur = surrogate(TinyNet())
    size = Call(torch.Size, (2, 3))
    sur.state["_buffers"]["u"] = Call(torch._utils._rebuild_tensor_v2, storage, 0, size, (3, 1), False, OrderedDict())
    path = tmp_path / "size.pkl"
    with _fake_edm_modules():
        path.write_bytes(pickle.dumps({"ema": sur}))
    assert b"Size" in path.read_bytes()
    assert torch.equal(load_edm_snapshot(path).state_dict["u"], torch.arange(6.0).reshape(2, 3))


def test_positional_precond_args_are_named(tmp_path):
    net = TinyNet()
    sur = surrogate(net, {"model_type": "SongUNet"})
    sur.class_name = "EDMPrecond"
    sur.state["_init_args"] = (32, 3, 10)
    path = tmp_path / "s.pkl"
    with _fake_edm_modules():
        path.write_bytes(pickle.dumps({"ema": sur}))
    kw = load_edm_snapshot(path).network_kwargs
    assert kw == {"model_type": "SongUNet", "img_resolution": 32, "img_channels": 3, "label_dim": 10}


# ------------------------------------------------------------------ malicious pickles


def raw_call(module: str, name: str, *args) -> bytes:
    """A protocol-2 pickle whose whole content is GLOBAL module.name applied to args (REDUCE)."""
    body = pickle.dumps(args, protocol=2)[2:-1]  # strip PROTO and STOP
    return b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n" + body + b"R."


class Call:
    """Pickles as fn(*args); usable as the callable of another Call (getattr tricks)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __call__(self, *a):  # pickle insists the reduce callable is callable
        raise AssertionError

    def __reduce__(self):
        return (self.fn, self.args)


def _payloads(marker: Path) -> dict[str, bytes]:
    m = str(marker)
    touch = f"touch {m}"
    code = f"open({m!r}, 'w').close()"
    return {
        "os.system": raw_call("os", "system", touch),
        "posix.system": pickle.dumps(Call(os.system, touch)),
        "builtins.eval": pickle.dumps(Call(eval, code)),
        "builtins.exec": pickle.dumps(Call(exec, code)),
        "subprocess.Popen": pickle.dumps(Call(subprocess.Popen, ["touch", m])),
        "builtins.getattr": pickle.dumps(Call(Call(getattr, Call(__import__, "os"), "system"), touch)),
        "builtins.__import__": raw_call("builtins", "__import__", "os"),
        "subprocess.check_call": raw_call("subprocess", "check_call", ["touch", m]),
        "training.networks.EDMPrecond": raw_call("training.networks", "EDMPrecond"),
        "torch.load": raw_call("torch", "load", m),
        "torch.serialization.load": raw_call("torch.serialization", "load", m),
        "torch._utils._rebuild_from_type_v2": raw_call("torch._utils", "_rebuild_from_type_v2"),
        "collections.Counter": raw_call("collections", "Counter"),
    }


@pytest.mark.parametrize("name", list(_payloads(Path("x"))))
def test_malicious_globals_are_refused(tmp_path, marker, name):
    raw = _payloads(marker)[name]
    path = tmp_path / "evil.pkl"
    path.write_bytes(raw)
    with pytest.raises(AmedError, match=r"refusing to load .*: global \S+ is not on the allow-list"):
        load_edm_snapshot(path)
    # The refused global is named in the message (posix.system may be spelled os.system on some OSes).
    with pytest.raises(AmedError) as e:
        safe_unpickle(io.BytesIO(raw), "x")
    assert "is not on the allow-list" in str(e.value)
    assert len(str(e.value).splitlines()) == 1
    assert not marker.exists()


def test_malicious_object_nested_in_state(tmp_path, marker):
    net = TinyNet()
    sur = surrogate(net, {"img_resolution": 16})
    sur.state["_modules"]["enc"]._modules["16x16_conv"].state["evil"] = Call(os.system, f"touch {marker}")
    path = tmp_path / "evil.pkl"
    with _fake_edm_modules():
        path.write_bytes(pickle.dumps({"ema": sur}))
    with pytest.raises(AmedError, match=r"global (posix|os|nt)\.system is not on the allow-list"):
        load_edm_snapshot(path)


def test_malicious_object_in_kwargs(tmp_path, marker):
    path = write_snapshot(tmp_path / "evil.pkl", TinyNet(), {"x": Call(eval, f"open({str(marker)!r},'w')")})
    with pytest.raises(AmedError, match=r"global builtins\.eval is not on the allow-list"):
        load_edm_snapshot(path)


class EvilStorage:
    """Pickles like a tensor storage (torch.storage._load_from_bytes(bytes)) with a hostile payload."""

    def __init__(self, payload: bytes):
        self.payload = payload

    def __reduce__(self):
        return (torch.storage._load_from_bytes, (self.payload,))


@pytest.mark.parametrize("kind", ["plain-pickle", "legacy-torch-save", "zip-torch-save"])
def test_malicious_payload_inside_storage_bytes(tmp_path, marker, kind):
    evil = Call(os.system, f"touch {marker}")
    if kind == "plain-pickle":
        payload = pickle.dumps(evil)
    else:
        buf = io.BytesIO()
        torch.save(evil, buf, _use_new_zipfile_serialization=(kind == "zip-torch-save"))
        payload = buf.getvalue()
    net = TinyNet()
    sur = surrogate(net)
    sur.state["_parameters"]["w16"] = Call(torch._utils._rebuild_tensor_v2, EvilStorage(payload), 0, (1,), (1,))
    path = tmp_path / "evil.pkl"
    with _fake_edm_modules():
        path.write_bytes(pickle.dumps({"ema": sur}))
    with pytest.raises(AmedError, match=r"refusing to load .*tensor storage holds more than plain weights"):
        load_edm_snapshot(path)


def test_tensor_view_past_its_storage_is_refused(tmp_path):
    """Tensor.set_ does not bounds-check: a crafted size/stride must not read past the storage."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = torch.arange(4, dtype=torch.float32).storage()
    sur = surrogate(TinyNet())
    sur.state["_buffers"]["u"] = Call(torch._utils._rebuild_tensor_v2, storage, 2, (1000,), (1,), False, OrderedDict())
    path = tmp_path / "oob.pkl"
    with _fake_edm_modules():
        path.write_bytes(pickle.dumps({"ema": sur}))
    with pytest.raises(AmedError, match="does not fit in its storage"):
        load_edm_snapshot(path)


def test_view_with_more_elements_than_its_storage_is_refused(tmp_path):
    """A stride-0 view of 4 floats can claim 2**40 elements; hashing or saving it would allocate them all."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = torch.arange(4, dtype=torch.float32).storage()
    sur = surrogate(TinyNet())
    sur.state["_buffers"]["u"] = Call(
        torch._utils._rebuild_tensor_v2, storage, 0, (2**20, 2**20), (0, 0), False, OrderedDict()
    )
    path = tmp_path / "wide.pkl"
    with _fake_edm_modules():
        path.write_bytes(pickle.dumps({"ema": sur}))
    with pytest.raises(AmedError, match="has 1099511627776 elements but its storage holds only 4"):
        load_edm_snapshot(path)


def test_storage_larger_than_its_payload_is_refused(tmp_path, monkeypatch):
    """The view check trusts the storage size, so a storage bigger than its bytes in the file is refused."""
    path = write_snapshot(tmp_path / "s.pkl", TinyNet(), {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        big = torch.zeros(1 << 16, dtype=torch.float32).storage()
    monkeypatch.setattr(torch, "load", lambda *a, **kw: big)
    with pytest.raises(AmedError, match="claims 262144 bytes but its payload has only"):
        load_edm_snapshot(path)


def _snapshot_with_child(tmp_path: Path, child: object) -> Path:
    sur = surrogate(TinyNet())
    sur.state["_modules"]["evil"] = child
    path = tmp_path / "s.pkl"
    with _fake_edm_modules():
        path.write_bytes(pickle.dumps({"ema": sur}))
    return path


def test_module_cycles_are_refused(tmp_path):
    loop = nn.ModuleDict()
    loop.__dict__["_modules"] = OrderedDict(again=loop)
    with pytest.raises(AmedError, match="module cycle at evil.again"):
        load_edm_snapshot(_snapshot_with_child(tmp_path, loop))


def test_shared_child_blow_up_is_bounded(tmp_path):
    """40 levels of a child shared twice would be 2**40 visits; the walk stops early instead."""
    node = nn.ModuleDict()
    for _ in range(40):
        parent = nn.ModuleDict()
        parent.__dict__["_modules"] = OrderedDict(a=node, b=node)
        node = parent
    with pytest.raises(AmedError, match="larger than"):
        load_edm_snapshot(_snapshot_with_child(tmp_path, node))


def test_persistent_ids_are_refused(tmp_path):
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return "x" if isinstance(obj, str) and obj == "pid" else None

    buf = io.BytesIO()
    P(buf).dump({"ema": "pid"})
    path = tmp_path / "pid.pkl"
    path.write_bytes(buf.getvalue())
    with pytest.raises(AmedError, match="persistent IDs"):
        load_edm_snapshot(path)


def test_only_latin1_codec_is_allowed():
    with pytest.raises(AmedError, match="only latin-1"):
        safe_unpickle(io.BytesIO(raw_call("_codecs", "encode", "abc", "rot13")))
    assert safe_unpickle(io.BytesIO(raw_call("_codecs", "encode", "\xff", "latin1"))) == b"\xff"


def test_allow_list_is_short_and_has_no_executors():
    names = {f"{m}.{n}" for m, n in ALLOWED_GLOBALS}
    for bad in ("builtins.eval", "builtins.exec", "builtins.getattr", "os.system", "torch.load"):
        assert bad not in names
    assert "torch_utils.persistence._reconstruct_persistent_obj" in names
    assert len(names) < 20


# ------------------------------------------------------------------ wrong structure, truncation, garbage


@pytest.mark.parametrize(
    "obj, message",
    [
        ([1, 2, 3], "expected a dict with an 'ema' network"),
        ({"G_ema": 1}, "expected a dict with an 'ema' network"),
        ({"ema": {"a": 1}}, "not a network saved by EDM's persistence module"),
        ({"ema": nn.Linear(2, 2)}, "not a network saved by EDM's persistence module"),
    ],
)
def test_wrong_structure(tmp_path, obj, message):
    path = tmp_path / "s.pkl"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(AmedError, match=message):
        load_edm_snapshot(path)


def test_record_that_is_not_a_module(tmp_path):
    sur = Persistent("EDMPrecond", {"_init_kwargs": {}, "x": 1})
    path = tmp_path / "s.pkl"
    with _fake_edm_modules():
        path.write_bytes(pickle.dumps({"ema": sur}))
    with pytest.raises(AmedError, match="not a torch.nn.Module"):
        load_edm_snapshot(path)


def test_missing_empty_directory_zip(tmp_path):
    with pytest.raises(AmedError, match="no such file"):
        load_edm_snapshot(tmp_path / "nope.pkl")
    (tmp_path / "empty.pkl").write_bytes(b"")
    with pytest.raises(AmedError, match="is empty"):
        load_edm_snapshot(tmp_path / "empty.pkl")
    with pytest.raises(AmedError, match="is a directory"):
        load_edm_snapshot(tmp_path)
    torch.save({"a": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(AmedError, match="zip archive"):
        load_edm_snapshot(tmp_path / "x.pt")


@pytest.fixture(scope="module")
def good_snapshot() -> bytes:
    return snapshot_bytes(TinyNet(), TINY_KWARGS)


def test_truncated_snapshots_raise_amed_error(tmp_path, good_snapshot):
    n = len(good_snapshot)
    cuts = sorted(set(range(0, 64)) | set(range(64, n, max(1, n // 150))) | {n - 2, n - 1})
    path = tmp_path / "cut.pkl"
    for cut in cuts:
        path.write_bytes(good_snapshot[:cut])
        with pytest.raises(AmedError):
            load_edm_snapshot(path)


def test_huge_memo_index_is_refused_without_allocating(tmp_path):
    """The C unpickler sizes its memo array from a PUT's index and zero-fills it: LONG_BINPUT 2**24
    alone made it allocate 256 MB. Single byte flips of good_snapshot that turn an opcode into
    LONG_BINPUT made it zero-fill up to 7 GB (or ask for 20+ GB): the byte-flip test's OOM risk.

    The snapshot is otherwise valid (None is memoized and popped right after PROTO), so the old loader
    accepted it after allocating the memo.
    """
    raw = snapshot_bytes(TinyNet(), TINY_KWARGS, protocol=2)
    assert raw[:2] == b"\x80\x02"
    pad = pickle.NONE + pickle.LONG_BINPUT + (2**24).to_bytes(4, "little") + pickle.POP
    path = tmp_path / "memo.pkl"
    path.write_bytes(raw[:2] + pad + raw[2:])
    tracemalloc.start()
    try:
        with pytest.raises(AmedError, match="memo index 16777216 at byte 3 is past the 0 objects stored before it"):
            load_edm_snapshot(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=600))
def test_random_bytes_raise_amed_error(tmp_path, data):
    path = tmp_path / "random.pkl"
    path.write_bytes(data)
    with pytest.raises(AmedError):
        load_edm_snapshot(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.floats(0, 1, exclude_max=True), value=st.integers(0, 255))
def test_byte_flips_never_escape_as_other_errors(tmp_path, good_snapshot, pos, value):
    raw = bytearray(good_snapshot)
    raw[int(pos * len(raw))] = value
    path = tmp_path / "flipped.pkl"
    path.write_bytes(bytes(raw))
    try:
        load_edm_snapshot(path)
    except AmedError:
        pass


# Adversarial pickles built opcode by opcode: every opcode that can import or call, fed names from
# the allow-list and from the dangerous side, in random orders. The loader must never run anything
# (the payloads would create the marker file) and never fail with anything but AmedError.
_NAMES = [
    ("os", "system"),
    ("posix", "system"),
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("builtins", "getattr"),
    ("builtins", "__import__"),
    ("subprocess", "Popen"),
    ("copyreg", "_reconstructor"),
    ("torch", "load"),
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch_utils.persistence", "_reconstruct_persistent_obj"),
    ("torch.storage", "_load_from_bytes"),
    ("builtins", "set"),
]


def _unicode(s: str) -> bytes:
    b = s.encode()
    return pickle.SHORT_BINUNICODE + bytes([len(b)]) + b


@st.composite
def _opcode_pickles(draw, marker_cmd: str) -> bytes:
    out = [pickle.PROTO + b"\x04"]
    for _ in range(draw(st.integers(1, 12))):
        mod, name = draw(st.sampled_from(_NAMES))
        op = draw(
            st.sampled_from(
                [
                    "global",
                    "stack_global",
                    "inst",
                    "reduce",
                    "build",
                    "newobj",
                    "newobj_ex",
                    "obj",
                    "ext",
                    "persid",
                    "mark",
                    "tuple",
                    "str",
                    "dict",
                    "int",
                ]
            )
        )
        if op == "global":
            out.append(pickle.GLOBAL + f"{mod}\n{name}\n".encode())
        elif op == "stack_global":
            out.append(_unicode(mod) + _unicode(name) + pickle.STACK_GLOBAL)
        elif op == "inst":
            out.append(pickle.MARK + _unicode(marker_cmd) + pickle.INST + f"{mod}\n{name}\n".encode())
        elif op == "reduce":
            out.append(_unicode(marker_cmd) + pickle.TUPLE1 + pickle.REDUCE)
        elif op == "build":
            out.append(pickle.EMPTY_DICT + pickle.BUILD)
        elif op == "newobj":
            out.append(pickle.EMPTY_TUPLE + pickle.NEWOBJ)
        elif op == "newobj_ex":
            out.append(pickle.EMPTY_TUPLE + pickle.EMPTY_DICT + pickle.NEWOBJ_EX)
        elif op == "obj":
            out.append(pickle.MARK + pickle.GLOBAL + f"{mod}\n{name}\n".encode() + _unicode(marker_cmd) + pickle.OBJ)
        elif op == "ext":
            out.append(pickle.EXT1 + bytes([draw(st.integers(1, 255))]))
        elif op == "persid":
            out.append(pickle.PERSID + b"x\n")
        elif op == "mark":
            out.append(pickle.MARK)
        elif op == "tuple":
            out.append(pickle.TUPLE)
        elif op == "str":
            out.append(_unicode(marker_cmd))
        elif op == "dict":
            out.append(pickle.EMPTY_DICT)
        else:
            out.append(pickle.BININT1 + bytes([draw(st.integers(0, 255))]))
    return b"".join(out) + pickle.STOP


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_opcode_level_adversarial_pickles_never_execute(tmp_path, data):
    marker = tmp_path / "pwned"
    payload = data.draw(_opcode_pickles(f"touch {marker}"))
    try:
        safe_unpickle(io.BytesIO(payload))
    except AmedError:
        pass
    assert not marker.exists()
