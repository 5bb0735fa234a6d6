"""Engine manifests: the checks that run before TensorRT ever sees a plan (CPU only, no TensorRT)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import pytest

from amed_deploy import manifest as mf
from amed_deploy.config import SamplerConfig
from amed_deploy.errors import AmedError
from amed_deploy.manifest import (
    Manifest,
    check_manifest,
    manifest_path_for,
    read_manifest,
    write_manifest,
)
from amed_deploy.metadata import GraphSpec
from amed_deploy.trt_common import check_engine_io

TRT = "10.16.1.11"
GPU, CC = "NVIDIA H100 80GB HBM3", "9.0"


def make_spec(precision: str = "fp16", label_dim: int = 0) -> GraphSpec:
    cfg = SamplerConfig.create("amed", 5, "time_uniform", (0.002, 80.0), True)
    return GraphSpec("amed", precision, (3, 8, 8), label_dim, 1, 2, 4, sampler=cfg, afs_rca=(0.5, 1.0, 0.1))


def make_io(spec: GraphSpec, image: str | None = None) -> list[dict]:
    image = image or ("float16" if spec.precision == "fp16" else "float32")
    io = [
        {"name": "x", "mode": "input", "dtype": image, "shape": [-1, 3, 8, 8]},
        {"name": "sigma", "mode": "input", "dtype": "float32", "shape": [-1]},
        {"name": "sigma_next", "mode": "input", "dtype": "float32", "shape": [-1]},
        {"name": "denoised", "mode": "output", "dtype": image, "shape": [-1, 3, 8, 8]},
    ]
    if spec.label_dim:
        io.append({"name": "class_labels", "mode": "input", "dtype": "float32", "shape": [-1, spec.label_dim]})
    io += [{"name": n, "mode": "output", "dtype": "float32", "shape": [-1, 1, 1, 1]} for n in ("r", "c", "a")]
    return io


@pytest.fixture
def plan(tmp_path):
    path = tmp_path / "engine.plan"
    path.write_bytes(os.urandom(4096))
    return path


def make_manifest(plan_path, **overrides) -> Manifest:
    data = plan_path.read_bytes()
    spec = make_spec()
    m = Manifest(
        plan_sha256=hashlib.sha256(data).hexdigest(),
        plan_bytes=len(data),
        tensorrt_version=TRT,
        gpu_name=GPU,
        compute_capability=CC,
        hardware_compatibility=None,
        version_compatible=False,
        io=make_io(spec),
        profile={
            "x": [[1, 3, 8, 8], [2, 3, 8, 8], [4, 3, 8, 8]],
            "sigma": [[1], [2], [4]],
            "sigma_next": [[1], [2], [4]],
        },
        onnx_sha256="0" * 64,
        built_at="2026-11-22T00:00:00+00:00",
        graph=spec.to_dict(),
    )
    return dataclasses.replace(m, **overrides)


def test_valid_manifest_passes_and_round_trips(plan):
    m = make_manifest(plan)
    path = manifest_path_for(plan)
    assert path.name == "engine.plan.json"
    write_manifest(path, m)
    back = read_manifest(path)
    assert back == m
    assert back.spec == make_spec()
    check_manifest(plan, back, TRT, GPU, CC)


def test_modified_plan_byte_is_a_hash_mismatch(plan):
    m = make_manifest(plan)
    data = bytearray(plan.read_bytes())
    data[100] ^= 0x01
    plan.write_bytes(bytes(data))
    with pytest.raises(AmedError, match=r"manifest does not match plan \(hash .*rebuild with amed-deploy build"):
        check_manifest(plan, m, TRT, GPU, CC)


def test_truncated_plan_is_refused(plan):
    m = make_manifest(plan)
    plan.write_bytes(plan.read_bytes()[:1000])
    with pytest.raises(AmedError, match=r"manifest does not match plan \(size 1000 bytes, manifest says 4096"):
        check_manifest(plan, m, TRT, GPU, CC)


def test_missing_plan_is_refused(plan):
    m = make_manifest(plan)
    plan.unlink()
    with pytest.raises(AmedError, match="missing"):
        check_manifest(plan, m, TRT, GPU, CC)


@pytest.mark.parametrize("here", ["11.4.0.106", "10.15.1.8", "10.16.2.1"])
def test_other_tensorrt_version_is_refused(plan, here):
    with pytest.raises(AmedError, match=rf"plan built with TensorRT {TRT}, this is {here} .*rebuild"):
        check_manifest(plan, make_manifest(plan), here, GPU, CC)


def test_version_compatible_plan_runs_on_newer_tensorrt_of_same_major(plan):
    m = make_manifest(plan, version_compatible=True)
    check_manifest(plan, m, TRT, GPU, CC)
    check_manifest(plan, m, "10.17.0.3", GPU, CC)
    for here in ("10.15.0.1", "11.4.0.106"):  # older, or another major: rebuild
        with pytest.raises(AmedError, match=rf"plan built with TensorRT {TRT}, this is {here}"):
            check_manifest(plan, m, here, GPU, CC)


def test_other_gpu_is_refused(plan):
    m = make_manifest(plan)
    with pytest.raises(AmedError, match=r"built on NVIDIA H100.*\(compute capability 9.0\), this is NVIDIA A100.*8.0"):
        check_manifest(plan, m, TRT, "NVIDIA A100-SXM4-80GB", "8.0")
    with pytest.raises(AmedError, match="one GPU model.*same_cc"):
        check_manifest(plan, m, TRT, "NVIDIA H100 PCIe", "9.0")


def test_same_cc_plan_runs_on_any_gpu_of_that_compute_capability(plan):
    m = make_manifest(plan, hardware_compatibility="same_cc")
    check_manifest(plan, m, TRT, "NVIDIA H100 PCIe", "9.0")
    with pytest.raises(AmedError, match="compute capability"):
        check_manifest(plan, m, TRT, "NVIDIA A100-SXM4-80GB", "8.0")


def test_ampere_plus_plan_runs_on_cc_8_0_and_newer(plan):
    m = make_manifest(plan, hardware_compatibility="ampere_plus")
    for name, cc in [("NVIDIA A100-SXM4-80GB", "8.0"), ("NVIDIA GeForce RTX 3090", "8.6"), ("NVIDIA B200", "10.0")]:
        check_manifest(plan, m, TRT, name, cc)
    with pytest.raises(AmedError, match="Ampere"):
        check_manifest(plan, m, TRT, "Tesla T4", "7.5")


@pytest.mark.parametrize(
    "content",
    [None, "", "  \n", "{not json", "[]", '{"schema": "something-else"}'],
    ids=["missing", "empty", "blank", "corrupt", "list", "schema"],
)
def test_bad_manifest_file_names_the_file(tmp_path, content):
    path = tmp_path / "engine.plan.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(AmedError, match="engine.plan.json"):
        read_manifest(path)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.pop("plan_sha256"),
        lambda d: d.update(plan_sha256="xyz"),
        lambda d: d.update(plan_bytes="4096"),
        lambda d: d.update(compute_capability="sm90"),
        lambda d: d.update(hardware_compatibility="everything"),
        lambda d: d.update(format_version=99),
        lambda d: d["graph"].update(precision="int3"),
    ],
)
def test_wrong_schema_is_refused(plan, change):
    d = make_manifest(plan).to_dict()
    change(d)
    path = manifest_path_for(plan)
    path.write_text(json.dumps(d))
    with pytest.raises(AmedError, match="engine.plan.json"):
        read_manifest(path)


def test_write_manifest_is_atomic(plan, monkeypatch):
    path = manifest_path_for(plan)
    write_manifest(path, make_manifest(plan))
    before = path.read_bytes()

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr("amed_deploy.files.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_manifest(path, make_manifest(plan, gpu_name="other"))
    assert path.read_bytes() == before
    assert sorted(p.name for p in plan.parent.iterdir()) == ["engine.plan", "engine.plan.json"]


def test_manifest_module_does_not_import_tensorrt():
    assert "tensorrt" not in vars(mf)


@pytest.mark.parametrize("label_dim", [0, 10])
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_engine_io_matching_the_spec_passes(precision, label_dim):
    spec = make_spec(precision, label_dim)
    check_engine_io(spec, make_io(spec))


def test_silently_fp32_engine_from_fp16_graph_is_refused():
    spec = make_spec("fp16")
    with pytest.raises(AmedError, match="'x' is float32, the fp16 graph needs float16.*fp32 engine"):
        check_engine_io(spec, make_io(spec, image="float32"))


def test_engine_io_names_and_modes_are_checked():
    spec = make_spec("fp32")
    io = make_io(spec)
    with pytest.raises(AmedError, match="differ"):
        check_engine_io(spec, io[:-1])
    with pytest.raises(AmedError, match="differ"):
        check_engine_io(make_spec("fp32", label_dim=10), io)
    io[4] = {**io[4], "mode": "input"}
    with pytest.raises(AmedError, match="'r' is an input"):
        check_engine_io(spec, io)
    bad = make_io(spec)
    bad[1] = {**bad[1], "dtype": "float16"}
    with pytest.raises(AmedError, match="'sigma' is float16"):
        check_engine_io(spec, bad)
