"""`amed-deploy check`: one exported graph against the fp32 PyTorch reference on every backend here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_KWARGS, tiny_net
from onnx import numpy_helper
from test_manifest import make_manifest

from amed_deploy import assets
from amed_deploy.checkpoint.format import Checkpoint, save_checkpoint
from amed_deploy.cli import main
from amed_deploy.files import file_sha256
from amed_deploy.graph import output_names
from amed_deploy.manifest import manifest_path_for, write_manifest
from amed_deploy.metadata import onnx_graph_spec
from amed_deploy.parity import Reference
from amed_deploy.sampling import load_model
from exporters.onnx_export import parity_errors

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _check(onnx_path, ckpt, predictor=None, *extra: str):
    args = ["check", "--onnx", str(onnx_path), "--ckpt", str(ckpt)]
    if predictor is not None:
        args += ["--predictor", str(predictor)]
    return CliRunner().invoke(main, [*args, *map(str, extra)])


def _rows(output: str) -> dict[tuple[str, str], str]:
    """(backend, output) -> the rest of its table row."""
    rows = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in ("onnxruntime-cpu", "onnxruntime-cuda", "tensorrt"):
            rows[parts[0], parts[1]] = " ".join(parts[2:])
    return rows


def _one_error_line(res) -> str:
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert "Traceback" not in res.output and "internal error" not in res.output
    return lines[0]


def test_tiny_graph_passes_and_the_report_is_written_once(tmp_path, tiny_ckpt, distilled, amed_onnx):
    pred = distilled[3]
    report = tmp_path / "report.json"
    res = _check(amed_onnx, tiny_ckpt, pred, "--batch", "3", "--json", report)
    assert res.exit_code == 0, res.output
    rows = _rows(res.output)
    for name in ("denoised", "r", "c", "a"):
        assert rows["onnxruntime-cpu", name].endswith("1e-04 pass"), res.output
    assert res.output.splitlines()[-1].startswith("PASS: onnxruntime-cpu")
    if not torch.cuda.is_available():
        assert "skipped: no CUDA GPU" in rows["onnxruntime-cuda", "-"]
    if not HAS_TRT:
        trt = rows["tensorrt", "-"]
        assert "skipped: TensorRT is not installed" in trt and "pip install 'amed-deploy[tensorrt]'" in trt
    data = json.loads(report.read_text())
    assert data["passed"] is True and data["batch"] == 3 and data["seeds"] == [0, 1]
    backends = {b["name"]: b for b in data["backends"]}
    assert set(backends) == {"onnxruntime-cpu", "onnxruntime-cuda", "tensorrt"}
    cpu = backends["onnxruntime-cpu"]
    assert cpu["status"] == "pass" and set(cpu["outputs"]) == {"denoised", "r", "c", "a"}
    assert all(o["passed"] and o["max_abs_error"] <= o["tolerance"] == 1e-4 for o in cpu["outputs"].values())
    if not HAS_TRT:
        assert backends["tensorrt"]["status"] == "skipped" and "pip install" in backends["tensorrt"]["reason"]

    before = report.read_bytes()
    again = _check(amed_onnx, tiny_ckpt, pred, "--json", report)
    assert "already exists; pass --force" in _one_error_line(again)
    assert report.read_bytes() == before
    forced = _check(amed_onnx, tiny_ckpt, pred, "--json", report, "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads(report.read_text())["batch"] == 4  # the graph's optimum by default
    # never over an input, even with --force
    assert "--json" in _one_error_line(_check(amed_onnx, tiny_ckpt, pred, "--json", amed_onnx, "--force"))


def test_check_and_the_exporter_share_one_comparison(tiny_ckpt, distilled, amed_onnx, tmp_path):
    """The exporter's parity check and `check` compute the same numbers (same inputs, same reference)."""
    network, *_, pred = distilled
    spec = onnx_graph_spec(amed_onnx)
    exported = parity_errors(amed_onnx.read_bytes(), network, spec)
    report = tmp_path / "r.json"
    assert _check(amed_onnx, tiny_ckpt, pred, "--json", report).exit_code == 0
    cpu = next(b for b in json.loads(report.read_text())["backends"] if b["name"] == "onnxruntime-cpu")
    assert {k: v["max_abs_error"] for k, v in cpu["outputs"].items()} == pytest.approx(exported, rel=1e-3, abs=1e-9)
    ref = Reference.compute(load_model(tiny_ckpt, pred).network, spec, 2, seeds=(5,))
    assert list(ref.cases[0][1]) == output_names(spec) == ["denoised", "r", "c", "a"]


def _perturbed(src: Path, dst: Path, factor: float) -> str:
    """A copy of `src` (same metadata) with one decoder weight scaled: denoised changes, r/c/a (from the
    encoder tap) do not."""
    model = onnx.load(src)
    init = [i for i in model.graph.initializer if ".dec." in i.name and i.name.endswith("conv1.weight")][-1]
    scaled = numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name)
    init.CopyFrom(scaled)
    onnx.save(model, dst)
    return init.name


def test_a_perturbed_graph_fails_and_names_the_output(tmp_path, tiny_ckpt, distilled, amed_onnx):
    bad = tmp_path / "bad.onnx"
    _perturbed(amed_onnx, bad, 1.5)
    report = tmp_path / "bad.json"
    res = _check(bad, tiny_ckpt, distilled[3], "--json", report)
    assert res.exit_code == 1, res.output
    assert "error:" not in res.output
    rows = _rows(res.output)
    assert rows["onnxruntime-cpu", "denoised"].endswith("FAIL"), res.output
    assert rows["onnxruntime-cpu", "r"].endswith("pass"), res.output
    last = res.output.splitlines()[-1]
    assert last.startswith("FAIL: onnxruntime-cpu denoised") and " r," not in last, last
    data = json.loads(report.read_text())
    assert data["passed"] is False
    cpu = next(b for b in data["backends"] if b["name"] == "onnxruntime-cpu")
    assert cpu["status"] == "fail" and not cpu["outputs"]["denoised"]["passed"]
    assert cpu["outputs"]["denoised"]["max_abs_error"] > 1e-4


def test_a_graph_with_non_finite_outputs_fails(tmp_path, tiny_ckpt, distilled, amed_onnx):
    bad = tmp_path / "inf.onnx"
    _perturbed(amed_onnx, bad, 1e38)
    res = _check(bad, tiny_ckpt, distilled[3])
    assert res.exit_code == 1, res.output
    assert "NaN/inf" in _rows(res.output)["onnxruntime-cpu", "denoised"]


def test_a_checkpoint_or_predictor_the_graph_was_not_made_from_is_refused(tmp_path, tiny_ckpt, distilled, amed_onnx):
    other = tmp_path / "other.pt"
    save_checkpoint(Checkpoint("EDMPrecond", dict(TINY_KWARGS), tiny_net(seed=1).state_dict(), {}), other)
    pred = distilled[3]
    report = tmp_path / "r.json"
    # the predictor's own binding (load_model) refuses first
    line = _one_error_line(_check(amed_onnx, other, pred, "--json", report))
    assert "distilled for" in line and "--ignore-checkpoint-mismatch" in line
    # paired anyway: the graph itself records another model
    line = _one_error_line(_check(amed_onnx, other, pred, "--ignore-checkpoint-mismatch", "--json", report))
    assert "was exported from model sha256" in line and "pass the checkpoint the graph was exported from" in line
    assert "AMED graph" in _one_error_line(_check(amed_onnx, tiny_ckpt, None))
    assert "--predictor" in _one_error_line(_check(amed_onnx, tiny_ckpt, None, "--ignore-checkpoint-mismatch"))
    assert "outside this graph's range" in _one_error_line(_check(amed_onnx, tiny_ckpt, pred, "--batch", "9"))
    assert "--engine" in _one_error_line(_check(amed_onnx, tiny_ckpt, pred, "--engine", tmp_path / "e.onnx"))
    assert not report.exists()


def test_an_engine_must_come_from_the_graph(tmp_path, tiny_ckpt, distilled, amed_onnx):
    """--engine is checked against the graph from its manifest alone (also where TensorRT is missing)."""
    pred = distilled[3]
    plan = tmp_path / "g.plan"
    plan.write_bytes(b"not really a plan")
    write_manifest(manifest_path_for(plan), make_manifest(plan))  # built from another graph
    assert "was built from another ONNX graph" in _one_error_line(_check(amed_onnx, tiny_ckpt, pred, "--engine", plan))
    if HAS_TRT:
        return
    write_manifest(manifest_path_for(plan), make_manifest(plan, onnx_sha256=file_sha256(amed_onnx)))
    res = _check(amed_onnx, tiny_ckpt, pred, "--engine", plan)
    assert res.exit_code == 0, res.output
    trt = _rows(res.output)["tensorrt", "-"]
    assert "TensorRT is not installed" in trt and "pip install 'amed-deploy[tensorrt]'" in trt
    assert "build a plan" not in trt  # the plan was given


@pytest.mark.skipif(bool(assets.missing()), reason="bundled demo files are not in this checkout")
def test_check_on_the_bundled_model(tmp_path):
    graph = tmp_path / "amed5.onnx"
    export = ["export", "--ckpt", "fashion-mnist", "--predictor", "amed5", "--out", str(graph)]
    res = CliRunner().invoke(main, [*export, "--batch", "2", "--fixed-batch"])
    assert res.exit_code == 0, res.output
    res = _check(graph, "fashion-mnist", "amed5")
    assert res.exit_code == 0, res.output
    assert _rows(res.output)["onnxruntime-cpu", "denoised"].endswith("pass")
    assert res.output.splitlines()[-1].startswith("PASS: onnxruntime-cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_check_on_the_gpu_compares_onnx_runtime_cuda(tiny_ckpt, distilled, amed_onnx):
    import onnxruntime as ort

    res = _check(amed_onnx, tiny_ckpt, distilled[3])
    assert res.exit_code == 0, res.output
    rows = _rows(res.output)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "skipped: this ONNX Runtime has no CUDA provider" in rows["onnxruntime-cuda", "-"], res.output
        pytest.skip("onnxruntime without its CUDA provider: ONNX Runtime CUDA reported as skipped")
    assert rows["onnxruntime-cuda", "denoised"].endswith("pass"), res.output
