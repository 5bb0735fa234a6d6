"""ONNX graph (made by `amed-deploy export`) -> TensorRT plan + sidecar manifest.

Built through Polygraphy's TensorRT backend (network from the ONNX path, CreateConfig, engine bytes,
deserialisation), for TensorRT 10 and 11. Precision comes from the ONNX graph's own types: TRT 11
networks are always strongly typed (the FP16 builder flag is gone), and on TRT 10 we ask for a
strongly typed network so both behave the same. What Polygraphy does not do stays here: the checks
before building, the engine's I/O dtypes checked against the graph's precision after it (a silently
fp32 engine is the classic TRT 11 failure), the manifest, atomic writes and one-line errors.

CLI: `amed-deploy build` should call `build_command_impl(onnx, out, **options)` and print its result.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from amed_deploy.errors import AmedError, first_line
from amed_deploy.files import atomic_write_bytes, file_sha256
from amed_deploy.graph import io_shapes
from amed_deploy.manifest import HARDWARE_COMPATIBILITY, Manifest, manifest_path_for, write_manifest
from amed_deploy.metadata import GraphSpec, onnx_graph_spec
from amed_deploy.outputs import same_file
from amed_deploy.trt_common import (
    check_engine_io,
    engine_io,
    gpu_identity,
    import_tensorrt,
    load_engine,
    make_logger,
    trt_major,
)

__all__ = ["build_command_impl", "build_engine", "check_portable", "profile_shapes"]


def check_portable(spec: GraphSpec, onnx_path: str | os.PathLike) -> None:
    """TensorRT parses standard ONNX only: refuse a graph rewritten for ONNX Runtime's contrib ops."""
    if spec.target != "portable":
        raise AmedError(
            f"{onnx_path} was exported for target {spec.target} (ONNX Runtime contrib ops TensorRT cannot parse); "
            "export the portable graph (the default --target) for TensorRT"
        )


def profile_shapes(spec: GraphSpec, batch_opt: int | None = None) -> list[dict[str, list[list[int]]]]:
    """One optimization profile per call batch size (an EPD graph's parallel call is a second one, and
    TensorRT gives each execution context its own profile), each {input: [min, opt, max] shapes} over the
    graph's batch range with that call's optimum: only the batch dimension varies (tight profiles build
    fast)."""
    opt = spec.batch_opt if batch_opt is None else batch_opt
    profiles = []
    for call_opt in spec.call_batches(opt):  # checks that each is in the graph's range
        per_batch = [io_shapes(spec, b)[0] for b in (spec.batch_min, call_opt, spec.batch_max)]
        profiles.append({name: [list(shapes[name]) for shapes in per_batch] for name in per_batch[0]})
    return profiles


def build_engine(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    workspace_gib: float = 4.0,
    timing_cache: str | os.PathLike | None = None,
    builder_optimization_level: int | None = None,
    hardware_compatibility: str | None = None,
    version_compatible: bool = False,
    batch_opt: int | None = None,
    overwrite: bool = True,
) -> Manifest:
    """Build a plan for the current GPU; write it and `<out>.json` atomically, only once it checks out
    (`overwrite=False`: refuse existing files at the final rename)."""
    trt = import_tensorrt()  # before any work: without TensorRT nothing is read or written
    if not workspace_gib > 0:
        raise AmedError(f"workspace must be positive, got {workspace_gib} GiB")
    if hardware_compatibility not in (None, *HARDWARE_COMPATIBILITY):
        raise AmedError(
            f"hardware compatibility must be one of {HARDWARE_COMPATIBILITY}, got {hardware_compatibility!r}"
        )
    if builder_optimization_level is not None and not 0 <= builder_optimization_level <= 5:
        raise AmedError(f"builder optimization level must be 0..5, got {builder_optimization_level}")
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if same_file(out_path, onnx_path) or same_file(manifest_path_for(out_path), onnx_path):
        raise AmedError(f"refusing to overwrite the ONNX graph {onnx_path} with the plan or its manifest")
    spec = onnx_graph_spec(onnx_path)
    check_portable(spec, onnx_path)
    profiles = profile_shapes(spec, batch_opt)
    if batch_opt is not None:
        spec = dataclasses.replace(spec, batch_opt=batch_opt)

    if not torch.cuda.is_available():
        raise AmedError("building a TensorRT engine needs the CUDA GPU it will run on; none is visible")
    gpu_name, cc = gpu_identity(torch.device("cuda", torch.cuda.current_device()))

    from polygraphy.backend import trt as poly
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    logger = make_logger(trt)
    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        try:
            builder, network, _parser = poly.network_from_onnx_path(
                str(onnx_path),
                # native InstanceNormalization (our GroupNorm): the plugin breaks hardware/version compatibility
                flags=[trt.OnnxParserFlag.NATIVE_INSTANCENORM],
                strongly_typed=trt_major(trt) < 11 or None,  # TRT 11 networks are always strongly typed
            )
            names = sorted(network.get_input(i).name for i in range(network.num_inputs))
            if names != sorted(profiles[0]):
                raise AmedError(f"{onnx_path} has inputs {names}, its metadata promises {sorted(profiles[0])}")
            opt_profiles = []
            for shapes in profiles:
                opt_profiles.append(poly.Profile())
                for name, (lo, mid, hi) in shapes.items():
                    opt_profiles[-1].add(name, lo, mid, hi)
            config = poly.CreateConfig(
                profiles=opt_profiles,
                memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(workspace_gib * (1 << 30))},
                load_timing_cache=str(timing_cache) if timing_cache is not None else None,
                builder_optimization_level=builder_optimization_level,
                hardware_compatibility_level=_hardware_level(trt, hardware_compatibility)
                if hardware_compatibility is not None
                else None,
                version_compatible=version_compatible or None,
            )(builder, network)
            data = bytes(poly.engine_bytes_from_network((builder, network), config))
            engine = load_engine(data, trt.Runtime(logger))
        except PolygraphyException as e:
            raise AmedError(f"TensorRT could not build {onnx_path}: {first_line(e)}") from None  # its log is above
    if engine is None:
        raise AmedError(f"TensorRT could not load the engine it just built ({logger.last_errors()})")
    io = engine_io(trt, engine)
    check_engine_io(spec, io)  # a silently fp32 engine stops here, before anything is written
    built_profile = {
        t["name"]: [[int(d) for d in s] for s in engine.get_tensor_profile_shape(t["name"], 0)]
        for t in io
        if t["mode"] == "input"
    }
    del engine

    manifest = Manifest(
        plan_sha256=hashlib.sha256(data).hexdigest(),
        plan_bytes=len(data),
        tensorrt_version=str(trt.__version__),
        gpu_name=gpu_name,
        compute_capability=cc,
        hardware_compatibility=hardware_compatibility,
        version_compatible=bool(version_compatible),
        io=io,
        profile=built_profile,
        onnx_sha256=file_sha256(onnx_path),
        built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        graph=spec.to_dict(),
    )
    if timing_cache is not None:  # written here, atomically, not by Polygraphy (which writes in place)
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    atomic_write_bytes(out_path, data, overwrite=overwrite)
    write_manifest(manifest_path_for(out_path), manifest, overwrite=overwrite)
    return manifest


def build_command_impl(onnx: str | os.PathLike, out: str | os.PathLike, **options: Any) -> str:
    """What `amed-deploy build` runs: build, then a short summary for the terminal.

    options are build_engine's keyword arguments (workspace_gib, timing_cache, builder_optimization_level,
    hardware_compatibility, version_compatible, batch_opt, overwrite).
    """
    m = build_engine(onnx, out, **options)
    spec = m.spec
    extra = [s for s in (m.hardware_compatibility, "version-compatible" if m.version_compatible else None) if s]
    return (
        f"wrote {out} ({m.plan_bytes / 2**20:.1f} MiB) and {manifest_path_for(out).name}: TensorRT "
        f"{m.tensorrt_version}, {m.gpu_name} (cc {m.compute_capability}), {spec.kind} {spec.precision}, "
        f"batch {spec.batch_min}..{spec.batch_max} (opt {spec.batch_opt})" + (f", {', '.join(extra)}" if extra else "")
    )


def _hardware_level(trt: ModuleType, name: str) -> Any:
    member = {"ampere_plus": "AMPERE_PLUS", "same_cc": "SAME_COMPUTE_CAPABILITY"}[name]
    level = getattr(trt.HardwareCompatibilityLevel, member, None)
    if level is None:
        raise AmedError(f"TensorRT {trt.__version__} does not support hardware compatibility {name!r}")
    return level
