"""A new user's first commands: the bundled files by name, `models`, and `info` on every artefact."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from test_manifest import make_manifest

from amed_deploy import assets
from amed_deploy.checkpoint.format import model_sha256
from amed_deploy.checkpoint.load import load_checkpoint
from amed_deploy.cli import main
from amed_deploy.files import file_sha256
from amed_deploy.manifest import manifest_path_for, write_manifest

bundled = pytest.mark.skipif(bool(assets.missing()), reason="bundled demo files are not in this checkout")


@bundled
def test_models_lists_every_bundled_file_by_a_name_that_resolves():
    res = CliRunner().invoke(main, ["models"])
    assert res.exit_code == 0, res.output
    for name, path in assets.names().items():
        assert name in res.output and str(path) in res.output
        assert assets.resolve(name) == path
    assert "amed NFE 5" in res.output and "amed_ipndm_uneven NFE 9" in res.output


def test_solvers_lists_every_solver_with_its_reference_in_the_cli_and_the_readme():
    from pathlib import Path

    from amed_deploy.solvers import SOLVERS

    res = CliRunner().invoke(main, ["solvers"])
    assert res.exit_code == 0, res.output
    readme = Path(__file__).resolve().parents[1].joinpath("README.md").read_text()
    table = readme.split("## Solvers", 1)[1].split("\n## ", 1)[0]
    for spec in SOLVERS.values():
        assert f"{spec.name}" in res.output and spec.reference.removeprefix("ours: ") in res.output
        assert f"`{spec.name}`" in table  # the README's solver table names it too
    assert "amed_ipndm_uneven: AMED-Plugin (iPNDM), uneven-grid weights" in res.output


def test_an_existing_file_wins_over_a_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "amed5").write_bytes(b"mine")
    assert assets.resolve("amed5") == tmp_path.joinpath("amed5").relative_to(tmp_path)
    assert assets.resolve("not-bundled.pt").name == "not-bundled.pt"


@bundled
def test_bundled_names_work_in_the_pipeline(tmp_path):
    """The README's first block: info, sample with a bundled predictor (by name), through the CLI."""
    res = CliRunner().invoke(main, ["info", "fashion-mnist"])
    assert res.exit_code == 0, res.output
    assert f"model sha256: {model_sha256(load_checkpoint(assets.MODEL))}" in res.output
    out = tmp_path / "grid.png"
    args = ["sample", "--ckpt", "fashion-mnist", "--predictor", "amed3", "--batch", "2", "--out", str(out)]
    res = CliRunner().invoke(main, [*args, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "amed, NFE 3" in res.output and out.exists()


def test_info_on_an_onnx_graph_shows_what_it_carries(amed_onnx, distilled):
    _, sampler, _, pred = distilled
    res = CliRunner().invoke(main, ["info", str(amed_onnx)])
    assert res.exit_code == 0, res.output
    text = res.output
    assert f"sampler:      amed, NFE {sampler.nfe}, {sampler.num_points} time points (time_uniform" in text
    assert "batch:        1..8 (optimum 4)" in text and "precision:    fp32" in text
    assert "target:       portable" in text and f"predictor:    {file_sha256(pred)}" in text
    res = CliRunner().invoke(main, ["info", str(amed_onnx), "--json"])
    record = json.loads(res.output)
    assert record["sampler"]["nfe"] == sampler.nfe and record["batch_max"] == 8


def test_info_on_a_plan_reads_its_manifest(tmp_path):
    plan = tmp_path / "engine.plan"
    plan.write_bytes(os.urandom(4096))
    m = make_manifest(plan)
    write_manifest(manifest_path_for(plan), m)
    res = CliRunner().invoke(main, ["info", str(plan)])
    assert res.exit_code == 0, res.output
    assert f"TensorRT:     {m.tensorrt_version}, built on {m.gpu_name}" in res.output
    assert f"plan sha256:  {m.plan_sha256}" in res.output and "NFE 5" in res.output
    assert "batch:        1..4 (optimum 2)" in res.output and "precision:    fp16" in res.output
