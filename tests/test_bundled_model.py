"""The bundled demo model and its predictors: present, bound to each other, and sampling well."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from amed_deploy import assets
from amed_deploy.checkpoint import file_sha256
from amed_deploy.cli import main
from amed_deploy.data import CLASS_NAMES
from amed_deploy.predictor_file import load_predictor
from amed_deploy.sampling import load_model, reference_sample

pytestmark = pytest.mark.skipif(bool(assets.missing()), reason="bundled demo files are not in this checkout")


def test_bundle_is_small_and_predictors_are_bound_to_it():
    assert assets.MODEL.stat().st_size < 20e6
    sha = file_sha256(assets.MODEL)
    for solver, files in (("amed", assets.PREDICTORS), ("amed_ipndm", assets.PLUGIN_PREDICTORS)):
        for nfe, path in files.items():
            bundle = load_predictor(path, checkpoint_sha256=sha)  # refuses a mismatch
            assert bundle.sampler.nfe == nfe and bundle.sampler.solver == solver


def test_amed5_is_close_to_the_accurate_solution():
    """At NFE 5 the bundled AMED-Solver lands near a 35-NFE Heun solution from the same noise, much
    nearer than DPM-Solver-2 at the same NFE (the property the project exists for)."""
    from amed_deploy.sampling import baseline_sampler

    loaded = load_model(assets.MODEL, assets.PREDICTORS[5])
    classes = list(range(len(CLASS_NAMES)))
    amed, _ = reference_sample(loaded.network, loaded.bundle.sampler, seed=123, batch=10, classes=classes)
    net = loaded.network.net
    heun, _ = reference_sample(loaded.network, baseline_sampler(net, "heun", 34), seed=123, batch=10, classes=classes)
    cfg = loaded.bundle.sampler
    dpm2_cfg = type(cfg).create("dpm2", 5, cfg.schedule, cfg.sigma_min, cfg.sigma_max, True)
    dpm2, _ = reference_sample(loaded.network, dpm2_cfg, seed=123, batch=10, classes=classes)
    rmse = lambda a, b: (a - b).square().mean().sqrt().item()  # noqa: E731
    assert rmse(amed, heun) < 0.8 * rmse(dpm2, heun), (rmse(amed, heun), rmse(dpm2, heun))
    assert amed.abs().max() < 2 and torch.isfinite(amed).all()  # data lives in [-1, 1]


def test_demo_command_writes_a_labelled_grid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["demo", "--out", "samples.png"])
    assert res.exit_code == 0, res.output
    assert "samples.png" in res.output
    img = Image.open(tmp_path / "samples.png")
    assert img.height >= len(CLASS_NAMES) * 32
    assert (tmp_path / "engines" / "demo-amed5.onnx").exists()
