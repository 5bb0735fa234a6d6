"""The import layers, read from the source (lazy imports inside functions included): the exporters never
reach the runtime and the runtime never reaches the exporters; what both use (the graph contract, the
manifest, the TensorRT helpers, the parity core) sits below them."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@cache
def _modules() -> dict[str, Path]:
    files = [*(ROOT / "amed_deploy").rglob("*.py"), *(ROOT / "exporters").rglob("*.py")]
    names = {}
    for path in files:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its body."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m in modules and m != name}


@cache
def _edges() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _reach(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in _edges()[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_the_walk_sees_imports():
    assert "amed_deploy.runtime.onnx_executor" in _reach("amed_deploy.runtime.sampler")  # a lazy import
    assert "amed_deploy.trt_common" in _reach("exporters.trt_build")


def test_exporters_never_reach_the_runtime():
    for name in (m for m in _modules() if m.startswith("exporters")):
        assert not {m for m in _reach(name) if m.startswith("amed_deploy.runtime")}, name


def test_the_runtime_never_reaches_the_exporters():
    for name in (m for m in _modules() if m.startswith("amed_deploy.runtime")):
        assert not {m for m in _reach(name) if m.startswith("exporters")}, name
