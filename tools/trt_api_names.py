"""Write the names the real TensorRT Python bindings register into tests/data/tensorrt_api_<major>.txt,
for the API conformance tests (tests/test_trt_conformance.py), which run without TensorRT.

The bindings wheels download from the package index (the builder libraries do not, so the extension
cannot be imported here); `tensorrt_bindings/tensorrt.so` holds every pybind11-registered class,
method, property and enum-value name as a NUL-terminated string literal, and the package's Python
files define the rest (e.g. `nptype`). Identifier-like strings of both are written, one per line,
after a header naming the wheel, its version and its SHA-256.

    python tools/trt_api_names.py            # downloads the two wheels below with pip
    python tools/trt_api_names.py --wheel W  # or reads given wheel files
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEELS = ("tensorrt-cu13-bindings==11.4.0.106", "tensorrt-cu12-bindings==10.13.3.9.post1")
OUT = Path(__file__).resolve().parent.parent / "tests" / "data"
IDENTIFIER = re.compile(rb"[A-Za-z_][A-Za-z0-9_]{1,79}")


def download(spec: str, folder: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
         "3.12", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64", "-d", str(folder),
         spec],
        check=True,
    )  # fmt: skip
    name = spec.split("==")[0].replace("-", "_")
    return next(folder.glob(f"{name}-*.whl"))


def so_strings(data: bytes) -> set[str]:
    """Identifier-like NUL-terminated strings of a shared object (C++ mangled symbols left out)."""
    names = set()
    for chunk in data.split(b"\0"):
        if IDENTIFIER.fullmatch(chunk) and not chunk.startswith(b"_Z"):
            names.add(chunk.decode())
    return names


def python_names(source: str) -> set[str]:
    """Module-level functions, classes and assignments of one of the package's Python files."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def write_list(wheel: Path) -> Path:
    version = wheel.name.split("-")[1]
    with zipfile.ZipFile(wheel) as z:
        names = so_strings(z.read("tensorrt_bindings/tensorrt.so"))
        names |= python_names(z.read("tensorrt_bindings/__init__.py").decode())
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    out = OUT / f"tensorrt_api_{version.split('.')[0]}.txt"
    header = [f"# wheel: {wheel.name}", f"# version: {version}", f"# sha256: {digest}", f"# names: {len(names)}"]
    out.write_text("\n".join([*header, *sorted(names)]) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, action="append", help="a bindings wheel already on disk")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheels = args.wheel or [download(spec, Path(tmp)) for spec in WHEELS]
        for wheel in wheels:
            print(f"wrote {write_list(wheel)}")


if __name__ == "__main__":
    main()
