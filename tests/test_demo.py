"""`amed-deploy demo` on a bundled model other than the default: the mechanism a second model uses (the
default model's own demo is in test_bundled_model.py)."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from amed_deploy import assets, demo
from amed_deploy.checkpoint.format import model_sha256
from amed_deploy.checkpoint.load import load_checkpoint
from amed_deploy.errors import AmedError
from amed_deploy.files import file_sha256


def test_demo_samples_another_bundled_model(tmp_path, monkeypatch, tiny_ckpt, distilled):
    """A second entry of assets.DEMO_MODELS is one `model=` away: its own cached graph (6 samples of each of
    its classes in one call), its own class names, a grid of one row per class."""
    predictor = distilled[3]  # the tiny model's AMED-Solver, NFE 5; 3 classes
    tiny = assets.DemoModel("tiny", tiny_ckpt, ("shoe", "bag", "coat"), {"amed": {5: predictor}})
    monkeypatch.setitem(assets.DEMO_MODELS, "tiny", tiny)
    result = demo.run_demo(tmp_path / "grid.png", folder=tmp_path / "cache", seed=1, model="tiny")
    graph = tmp_path / "cache" / "demo-tiny-amed5.onnx"
    assert result["graph"] == graph and result["config"].nfe == 5
    sha = model_sha256(load_checkpoint(tiny_ckpt))
    assert demo._cached_graph_matches(graph, sha, file_sha256(predictor), 5, batch=18)
    assert not demo._cached_graph_matches(graph, sha, file_sha256(predictor), 5, batch=60)  # not the default's
    with Image.open(tmp_path / "grid.png") as img:
        assert img.height == 3 * 16 * 3  # 3 rows (classes) of 16-pixel images at scale 3
    with pytest.raises(AmedError, match="unknown demo model 'nope'; bundled: fashion-mnist, cifar10, tiny"):
        demo.run_demo(tmp_path / "x.png", folder=tmp_path / "cache", model="nope")
    gone = assets.DemoModel("gone", tmp_path / "no.pt", (), {"amed": {5: predictor}})
    monkeypatch.setitem(assets.DEMO_MODELS, "gone", gone)
    with pytest.raises(AmedError, match="bundled demo files are missing from this installation: no.pt"):
        demo.run_demo(tmp_path / "x.png", folder=tmp_path / "cache", model="gone")
    assert not (tmp_path / "x.png").exists()


def test_a_second_bundled_model_has_prefixed_short_names(tmp_path, monkeypatch, tiny_ckpt, distilled):
    """A model other than the default keeps its predictors in a folder of its own, known by names with its
    prefix (the default's keep theirs: `amed5`); `models` lists it with its title."""
    from click.testing import CliRunner

    from amed_deploy.cli import main

    folder = tmp_path / "tiny"
    folder.mkdir()
    model = assets.bundled_model("tiny", tiny_ckpt, ("shoe", "bag", "coat"), "a tiny test model", folder, "tiny-")
    shutil.copyfile(distilled[3], folder / "amed5.pt")  # the tiny model's AMED-Solver, NFE 5
    monkeypatch.setitem(assets.DEMO_MODELS, "tiny", model)
    names = assets.names()
    assert names["tiny"] == tiny_ckpt and names["tiny-amed5"] == folder / "amed5.pt"
    assert names["amed5"] == assets.PREDICTORS[5] and assets.resolve("tiny-epd9") == folder / "epd9.pt"
    assert assets.model_of(tiny_ckpt) is model and not assets.missing("tiny")
    res = CliRunner().invoke(main, ["models"])
    assert res.exit_code == 0, res.output
    assert "a tiny test model" in res.output and "tiny-amed5" in res.output
    assert "predictor: amed NFE 5" in res.output.split("tiny-amed5", 1)[1].splitlines()[0]
