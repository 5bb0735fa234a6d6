"""`amed-deploy demo` on a bundled model other than the default: the mechanism a second model uses (the
default model's own demo is in test_bundled_model.py)."""

from __future__ import annotations

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
    tiny = assets.DemoModel("tiny", tiny_ckpt, ("shoe", "bag", "coat"), {5: predictor})
    monkeypatch.setitem(assets.DEMO_MODELS, "tiny", tiny)
    result = demo.run_demo(tmp_path / "grid.png", folder=tmp_path / "cache", seed=1, model="tiny")
    graph = tmp_path / "cache" / "demo-tiny-amed5.onnx"
    assert result["graph"] == graph and result["config"].nfe == 5
    sha = model_sha256(load_checkpoint(tiny_ckpt))
    assert demo._cached_graph_matches(graph, sha, file_sha256(predictor), 5, batch=18)
    assert not demo._cached_graph_matches(graph, sha, file_sha256(predictor), 5, batch=60)  # not the default's
    with Image.open(tmp_path / "grid.png") as img:
        assert img.height == 3 * 16 * 3  # 3 rows (classes) of 16-pixel images at scale 3
    with pytest.raises(AmedError, match="unknown demo model 'nope'; bundled: fashion-mnist, tiny"):
        demo.run_demo(tmp_path / "x.png", folder=tmp_path / "cache", model="nope")
    monkeypatch.setitem(assets.DEMO_MODELS, "gone", assets.DemoModel("gone", tmp_path / "no.pt", (), {5: predictor}))
    with pytest.raises(AmedError, match="bundled demo files are missing from this installation: no.pt"):
        demo.run_demo(tmp_path / "x.png", folder=tmp_path / "cache", model="gone")
    assert not (tmp_path / "x.png").exists()
