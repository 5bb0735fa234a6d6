"""The project's TensorRT code against the real TensorRT Python API, without TensorRT.

tests/data/tensorrt_api_<major>.txt hold the names the real bindings register (written by
tools/trt_api_names.py from the tensorrt-cu13-bindings 11.x and tensorrt-cu12-bindings 10.x wheels:
the pybind11 strings of tensorrt.so plus the package's Python names). The linker keeps a name that is
the tail of a longer string only inside it (`INPUT` lives in `CONDITIONAL_INPUT`), so a name counts as
present when it is a whole string or a tail; tail-only matches are weaker evidence and are printed.

What this covers: every attribute the code reads on the `tensorrt` module and on the TensorRT objects
it holds (builder, network, config, engine, context, runtime...), in both versions; every name the
fake `tensorrt` of tests/test_tensorrt.py exposes; every Polygraphy call's keywords against its real
signature. What it does not: argument types, return values, behaviour — only a machine with TensorRT
(`pytest -m tensorrt`) checks those."""

from __future__ import annotations

import ast
import enum
import inspect
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
# every module that calls TensorRT (the builder, the executor and the helpers they share)
TRT_CODE = [
    ROOT / "exporters" / "trt_build.py",
    ROOT / "amed_deploy" / "runtime" / "trt_executor.py",
    ROOT / "amed_deploy" / "trt_common.py",
]
# variables that hold TensorRT objects in that code (the module itself is `trt`)
TRT_OBJECTS = {"trt", "builder", "network", "config", "engine", "context", "runtime"}
SUPPORTED = (10, 11)  # the code claims both (trt_build's docstring, import_tensorrt's version check)


@cache
def real_names(major: int) -> tuple[frozenset[str], tuple[str, ...], dict[str, str]]:
    lines = (DATA / f"tensorrt_api_{major}.txt").read_text().splitlines()
    header = dict(line[2:].split(": ", 1) for line in lines if line.startswith("# "))
    names = tuple(line for line in lines if line and not line.startswith("#"))
    return frozenset(names), names, header


def lookup(name: str, major: int) -> str | None:
    """'whole', 'tail' (only as the end of a longer registered string), or None (absent)."""
    whole, names, _ = real_names(major)
    if name in whole:
        return "whole"
    return "tail" if any(n.endswith(name) for n in names) else None


def _root(node: ast.AST) -> str | None:
    """The variable an attribute chain starts from: `config.get_timing_cache().serialize` -> config;
    `self.context.execute_async_v3` -> context."""
    while True:
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return node.attr
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Subscript):
            node = node.value
        else:
            return node.id if isinstance(node, ast.Name) else None


def used_names() -> dict[str, set[str]]:
    """{name: {file:line, ...}} of every attribute read on `trt` or a TensorRT object."""
    used: dict[str, set[str]] = {}
    for path in TRT_CODE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and _root(node) in TRT_OBJECTS:
                if isinstance(node.value, ast.Name) and node.value.id == "self":
                    continue  # `self.engine` is ours; what is read on it is not
                if node.attr.startswith("__") and node.attr != "__version__":
                    continue
                used.setdefault(node.attr, set()).add(f"{path.name}:{node.lineno}")
    return used


def test_the_lists_come_from_the_named_wheels():
    for major in SUPPORTED:
        whole, _, header = real_names(major)
        assert header["version"].startswith(f"{major}.") and len(header["sha256"]) == 64
        assert header["wheel"].startswith("tensorrt_cu") and int(header["names"]) == len(whole)
        assert all(lookup(n, major) for n in ("Builder", "OnnxParser", "execute_async_v3", "deserialize_cuda_engine"))
    assert lookup("EXPLICIT_BATCH", 10) == "whole" and lookup("EXPLICIT_BATCH", 11) is None  # removed in 11
    assert lookup("no_such_tensorrt_name", 11) is None


def test_walk_finds_the_calls_the_code_makes():
    """The walk itself must see the code's central calls, or the next test proves nothing."""
    used = used_names()
    assert {"execute_async_v3", "set_tensor_address", "get_tensor_profile_shape", "MemoryPoolType"} <= set(used)
    assert {"OnnxParserFlag", "NATIVE_INSTANCENORM", "num_io_tensors", "get_timing_cache"} <= set(used)


@pytest.mark.parametrize("major", SUPPORTED)
def test_every_name_the_code_uses_exists_in_real_tensorrt(major):
    used = used_names()
    found = {name: lookup(name, major) for name in used}
    missing = {name: sorted(used[name]) for name, how in found.items() if how is None}
    assert not missing, f"not in TensorRT {real_names(major)[2]['version']}: {missing}"
    tails = sorted(name for name, how in found.items() if how == "tail")
    print(f"TensorRT {major}: {len(found)} names, tail-only matches (weaker evidence): {tails}")


def _fake_names(trt) -> set[str]:
    """Public names of the fake module, of its classes and of its enums' members."""
    names = set()
    for attr, value in vars(trt).items():
        if attr.startswith("_") or attr == "calls":  # calls: the fake's own record of what was called
            continue
        names.add(attr)
        if isinstance(value, type) and issubclass(value, enum.Enum):
            names.update(value.__members__)
        elif isinstance(value, type):
            for member, inner in vars(value).items():
                if not member.startswith("_"):
                    names.add(member)
                    if isinstance(inner, type) and issubclass(inner, enum.Enum):
                        names.update(inner.__members__)
    return names


@pytest.mark.parametrize("version", ["10.16.1.11", "11.4.0.106"])
def test_the_fake_tensorrt_exposes_only_real_names(version):
    from test_tensorrt import fake_tensorrt

    trt = fake_tensorrt(version)
    names = _fake_names(trt)
    assert {"Builder", "create_network", "set_shape", "NATIVE_INSTANCENORM"} <= names  # the walk sees the fake
    major = int(version.split(".")[0])
    absent = sorted(n for n in names if lookup(n, major) is None)
    assert not absent, f"the fake exposes names TensorRT {version} does not have: {absent}"


def _polygraphy_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for path in TRT_CODE:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "poly":
                calls.append((f.attr, node))
            elif (
                isinstance(f, ast.Call)
                and isinstance(f.func, ast.Attribute)
                and getattr(f.func.value, "id", "") == "poly"
            ):
                calls.append((f.func.attr, f))  # poly.CreateConfig(...)(builder, network)
            elif isinstance(f, ast.Name) and f.id == "engine_from_bytes":
                calls.append((f.id, node))
    return calls


def _keywords(target) -> tuple[set[str], int]:
    """(accepted keyword names, max positional args) of a function, or of a class's __init__ chain
    (Polygraphy's CreateConfig takes its common options through **kwargs into its base class)."""
    if not inspect.isclass(target):
        params = inspect.signature(target).parameters.values()
        assert not any(p.kind is p.VAR_KEYWORD for p in params)
        return {p.name for p in params}, len(params)
    names, positional = set(), None
    for cls in target.__mro__[:-1]:
        if "__init__" not in vars(cls):
            continue
        params = list(inspect.signature(vars(cls)["__init__"]).parameters.values())[1:]
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        positional = len(params) if positional is None else positional
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names, positional or 0


def test_polygraphy_calls_match_its_real_signatures():
    from polygraphy.backend import trt as poly

    calls = _polygraphy_calls()
    assert {name for name, _ in calls} >= {"network_from_onnx_path", "CreateConfig", "engine_bytes_from_network"}
    for name, call in calls:
        accepted, positional = _keywords(getattr(poly, name))
        unknown = {k.arg for k in call.keywords} - accepted
        assert not unknown and len(call.args) <= positional, f"polygraphy {name}: unknown keywords {unknown}"
    assert _keywords(poly.CreateConfig)[0] >= {"profiles", "memory_pool_limits", "tf32"}  # the chain is walked
