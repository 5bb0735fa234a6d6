"""The sidecar manifest of a TensorRT plan (`<plan>.json`).

A plan cannot carry user metadata and only loads on the TensorRT version and GPU it was built for, so
the manifest records both, plus the plan's SHA-256 and the whole graph spec (sampler config included),
which makes plan + manifest self-describing. `check_manifest` runs before deserialising, turning
TensorRT's opaque "expecting library version X got Y" / None into a message that says what to do.

Written by the builder (exporters/trt_build.py) and read by the runtime, `info` and `check`, so it
belongs to neither. Pure Python: importable without TensorRT.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import AmedError
from .fields import FieldError, check_nesting, strict_bool, strict_int, strict_list, strict_str
from .files import atomic_write_bytes, file_sha256
from .metadata import MAX_BATCH, GraphSpec
from .records import check_stamp, stamp

FORMAT = "amed-deploy/trt-manifest"
FORMAT_VERSION = 1
HARDWARE_COMPATIBILITY = ("ampere_plus", "same_cc")
REBUILD = "rebuild with amed-deploy build"
MAX_PLAN_BYTES = 2**40  # 1 TiB: no real plan comes near
MAX_IO_TENSORS = 64  # a graph has at most 8
MAX_RANK = 8


@dataclass
class Manifest:
    """Everything needed to decide, before deserialising, whether a plan can run here, and to run it."""

    plan_sha256: str
    plan_bytes: int
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    hardware_compatibility: str | None
    version_compatible: bool
    io: list[dict] = field(default_factory=list)
    profile: dict[str, list[list[int]]] = field(default_factory=dict)
    onnx_sha256: str | None = None
    built_at: str = ""
    graph: dict = field(default_factory=dict)

    @property
    def spec(self) -> GraphSpec:
        return GraphSpec.from_dict(self.graph)

    def to_dict(self) -> dict:
        return {**stamp(FORMAT, FORMAT_VERSION), **asdict(self)}


def manifest_path_for(plan_path: str | os.PathLike) -> Path:
    """The manifest sits beside its plan: `engine.plan` -> `engine.plan.json`."""
    return Path(str(plan_path) + ".json")


def write_manifest(path: str | os.PathLike, m: Manifest, *, overwrite: bool = True) -> None:
    """Write atomically, so a crash never leaves a half manifest next to a good plan."""
    text = json.dumps(m.to_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, text.encode(), overwrite=overwrite)


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read and validate; a missing, empty, corrupt or foreign file is one AmedError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AmedError(f"engine manifest {path} is missing: {REBUILD} (it writes the plan and its manifest)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AmedError(f"cannot read engine manifest {path}: {e}") from None
    if not text.strip():
        raise AmedError(f"engine manifest {path} is empty: {REBUILD}")
    try:
        d = json.loads(text)
    except RecursionError:
        raise AmedError(f"engine manifest {path} is nested too deeply: {REBUILD}") from None
    except ValueError as e:  # JSONDecodeError, and ints over Python's 4300-digit limit
        raise AmedError(f"engine manifest {path} is not valid JSON ({e}): {REBUILD}") from None
    try:
        return _from_dict(d)
    except AmedError as e:
        raise AmedError(f"engine manifest {path}: {e}") from None


def _from_dict(d: object) -> Manifest:
    if not isinstance(d, dict):
        raise AmedError("not a JSON object")
    check_nesting(d, "the manifest")
    check_stamp(d, FORMAT, FORMAT_VERSION, "it", "a TensorRT plan manifest made by `amed-deploy build`")
    names = {f.name for f in fields(Manifest)}
    missing = sorted(n for n in names if n not in d)
    if missing:
        raise AmedError(f"missing fields {missing}")
    try:
        m = Manifest(
            plan_sha256=_sha256(d["plan_sha256"], "plan_sha256"),
            plan_bytes=strict_int(d["plan_bytes"], "plan_bytes", 1, MAX_PLAN_BYTES),
            tensorrt_version=strict_str(d["tensorrt_version"], "tensorrt_version"),
            gpu_name=strict_str(d["gpu_name"], "gpu_name"),
            compute_capability=strict_str(d["compute_capability"], "compute_capability"),
            hardware_compatibility=d["hardware_compatibility"],
            version_compatible=strict_bool(d["version_compatible"], "version_compatible"),
            io=_io_list(d["io"]),
            profile=_profile(d["profile"]),
            onnx_sha256=None if d["onnx_sha256"] is None else _sha256(d["onnx_sha256"], "onnx_sha256"),
            built_at=strict_str(d["built_at"], "built_at"),
            graph=d["graph"],
        )
    except FieldError as e:
        raise AmedError(f"malformed fields (wrong types or values): {e}") from None
    ok = (
        _version_tuple(m.tensorrt_version)
        and _cc_tuple(m.compute_capability)
        and m.hardware_compatibility in (None, *HARDWARE_COMPATIBILITY)
        and isinstance(m.graph, dict)
    )
    if not ok:
        raise AmedError("malformed fields (wrong types or values)")
    GraphSpec.from_dict(m.graph)  # validate the graph record now rather than at first use
    return m


def _sha256(value: object, name: str) -> str:
    text = strict_str(value, name)
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise FieldError(f"{name} must be 64 lowercase hex digits")
    return text


def _shape(value: object, name: str, lo: int) -> list[int]:
    """A tensor shape: dims lo..MAX_BATCH (-1 marks a dynamic dimension in an engine's I/O list)."""
    dims = strict_list(value, name)
    if len(dims) > MAX_RANK:
        raise FieldError(f"{name} has rank {len(dims)}, at most {MAX_RANK}")
    return [strict_int(v, name, lo, MAX_BATCH) for v in dims]


def _io_list(value: object) -> list[dict]:
    entries = strict_list(value, "io")
    if len(entries) > MAX_IO_TENSORS:
        raise FieldError(f"io lists {len(entries)} tensors, at most {MAX_IO_TENSORS}")
    return [_io_entry(t) for t in entries]


def _io_entry(t: object) -> dict:
    if not isinstance(t, dict) or not {"name", "mode", "dtype", "shape"} <= t.keys():
        raise FieldError("an io entry must be an object with name, mode, dtype and shape")
    name = strict_str(t["name"], "io name")
    mode = strict_str(t["mode"], f"io {name!r} mode")
    if mode not in ("input", "output"):
        raise FieldError(f"io {name!r} mode must be input or output, got {mode!r}")
    return {
        **t,
        "name": name,
        "mode": mode,
        "dtype": strict_str(t["dtype"], f"io {name!r} dtype"),
        "shape": _shape(t["shape"], f"io {name!r} shape", -1),
    }


def _profile(value: object) -> dict[str, list[list[int]]]:
    """{input: [min, opt, max] shapes}."""
    if not isinstance(value, dict) or len(value) > MAX_IO_TENSORS:
        raise FieldError("profile must be an object of input name -> [min, opt, max] shapes")
    return {
        name: [_shape(s, f"profile {name!r}", 1) for s in strict_list(shapes, f"profile {name!r}", 3)]
        for name, shapes in value.items()
    }


def check_manifest(
    plan_path: str | os.PathLike, m: Manifest, trt_version: str, gpu_name: str, compute_capability: str
) -> None:
    """Refuse, with the reason and the fix, a plan that does not match its manifest or cannot run here.

    Version policy: a plain plan needs exactly the TensorRT version that built it (TensorRT checks
    major.minor.patch.build). A version-compatible plan runs on the same or a newer TensorRT of the
    same major version; across major versions we ask for a rebuild.
    Hardware policy: a plain plan needs the same compute capability and GPU model; 'same_cc' any GPU of
    that compute capability; 'ampere_plus' any GPU of compute capability 8.0 or newer.
    """
    plan_path = Path(plan_path)
    try:
        size = plan_path.stat().st_size
    except FileNotFoundError:
        raise AmedError(f"TensorRT plan {plan_path} is missing: {REBUILD}") from None
    if size != m.plan_bytes:
        raise AmedError(
            f"manifest does not match plan (size {size} bytes, manifest says {m.plan_bytes}; "
            f"truncated or replaced?): {REBUILD}"
        )
    digest = file_sha256(plan_path)
    if digest != m.plan_sha256:
        raise AmedError(
            f"manifest does not match plan (hash {digest[:12]}..., manifest says {m.plan_sha256[:12]}...): {REBUILD}"
        )
    _check_version(m, trt_version)
    _check_gpu(m, gpu_name, compute_capability)


def _check_version(m: Manifest, trt_version: str) -> None:
    built, here = _version_tuple(m.tensorrt_version), _version_tuple(trt_version)
    if not here:
        raise AmedError(f"cannot parse this TensorRT's version {trt_version!r}")
    if m.version_compatible:
        if built[0] == here[0] and here >= built:
            return
        why = "a version-compatible plan runs only on the same or a newer TensorRT of the same major version"
    else:
        n = min(len(built), len(here))
        if built[:n] == here[:n]:
            return
        why = "a plan runs only on the TensorRT version that built it"
    raise AmedError(f"plan built with TensorRT {m.tensorrt_version}, this is {trt_version} ({why}): {REBUILD}")


def _check_gpu(m: Manifest, gpu_name: str, compute_capability: str) -> None:
    built, here = _cc_tuple(m.compute_capability), _cc_tuple(compute_capability)
    if not here:
        raise AmedError(f"cannot parse this GPU's compute capability {compute_capability!r}")
    what = (
        f"plan built on {m.gpu_name} (compute capability {m.compute_capability}), "
        f"this is {gpu_name} ({compute_capability})"
    )
    if m.hardware_compatibility == "ampere_plus":
        if here >= (8, 0):
            return
        raise AmedError(f"{what}: the plan is hardware-compatible with Ampere (8.0) and newer only: {REBUILD} here")
    if built != here:
        raise AmedError(
            f"{what}: a plan runs only on GPUs of the compute capability it was built for: {REBUILD} on this GPU "
            "(or build with --hardware-compatibility ampere_plus to share one plan across Ampere and newer)"
        )
    if m.hardware_compatibility != "same_cc" and m.gpu_name != gpu_name:
        raise AmedError(
            f"{what}: TensorRT tunes a plan for one GPU model: {REBUILD} on this GPU "
            "(or build with --hardware-compatibility same_cc to share one plan across GPUs of one compute capability)"
        )


def _version_tuple(v: object) -> tuple[int, ...]:
    """'10.16.1.11' -> (10, 16, 1, 11); trailing non-numeric parts (post/dev tags) are ignored."""
    out: list[int] = []
    for part in str(v).split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def _cc_tuple(cc: object) -> tuple[int, int] | None:
    match = re.fullmatch(r"(\d+)\.(\d+)", str(cc))
    return (int(match[1]), int(match[2])) if match else None
