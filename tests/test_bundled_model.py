"""The bundled demo model and its predictors: present, bound to each other, and sampling well."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from amed_deploy import assets
from amed_deploy.cli import main
from amed_deploy.data import CLASS_NAMES
from amed_deploy.files import file_sha256
from amed_deploy.predictor_file import load_predictor
from amed_deploy.sampling import load_model, reference_sample

pytestmark = pytest.mark.skipif(bool(assets.missing()), reason="bundled demo files are not in this checkout")


def test_bundle_is_small_and_predictors_are_bound_to_it():
    assert assets.MODEL.stat().st_size < 20e6
    from amed_deploy.checkpoint.format import model_sha256
    from amed_deploy.checkpoint.load import load_checkpoint

    sha = model_sha256(load_checkpoint(assets.MODEL))
    assert set(assets.BUNDLED) == {"amed", "amed_ipndm_uneven", "amed_ipndm", "amed_dpmpp", "epd", "epd_ipndm"}
    for solver, files in assets.BUNDLED.items():
        for nfe, path in files.items():
            bundle = load_predictor(path, model_sha256=sha)  # refuses a mismatch
            assert bundle.sampler.nfe == nfe and bundle.sampler.solver == solver
            assert path.name == f"{solver}{nfe}.pt"  # a bundled predictor is named after its formula


def test_the_relabelled_plugin_predictors_hold_their_training_record():
    """Distilled as amed_ipndm before #17, with the formula now called amed_ipndm_uneven: only the name
    changed, and the file says so."""
    for nfe, path in assets.PLUGIN_PREDICTORS.items():
        bundle = load_predictor(path)
        assert torch.load(path, weights_only=True)["format_version"] == 2
        assert bundle.sampler.solver == "amed_ipndm_uneven" and bundle.sampler.max_order == 4
        assert bundle.training["distill"]["student"] == "amed_ipndm" and bundle.training["distill"]["nfe"] == nfe
        assert "amed_ipndm -> amed_ipndm_uneven" in bundle.training["relabelled"]


CLASSES = list(range(len(CLASS_NAMES)))


def _sample(network, cfg):
    """One image per class from the seed the accuracy tests share."""
    return reference_sample(network, cfg, seed=123, batch=10, classes=CLASSES)[0]


@pytest.fixture(scope="module")
def amed5():
    return load_model(assets.MODEL, assets.PREDICTORS[5])


@pytest.fixture(scope="module")
def heun_solution(amed5):
    """The accurate ODE solution the accuracy tests compare with: Heun at NFE 35 from the shared seed."""
    from amed_deploy.sampling import baseline_sampler

    return _sample(amed5.network, baseline_sampler(amed5.network.net, "heun", 34))


def _rmse(a, b) -> float:
    return (a - b).square().mean().sqrt().item()


def test_amed5_is_close_to_the_accurate_solution(amed5, heun_solution):
    """At NFE 5 the bundled AMED-Solver lands near a 35-NFE Heun solution from the same noise, much
    nearer than DPM-Solver-2 at the same NFE (the property the project exists for)."""
    cfg = amed5.bundle.sampler
    amed = _sample(amed5.network, cfg)
    dpm2_cfg = type(cfg).create("dpm2", 5, cfg.schedule, (cfg.sigma_min, cfg.sigma_max), True)
    dpm2 = _sample(amed5.network, dpm2_cfg)
    heun = heun_solution
    assert _rmse(amed, heun) < 0.8 * _rmse(dpm2, heun), (_rmse(amed, heun), _rmse(dpm2, heun))
    assert amed.abs().max() < 2 and torch.isfinite(amed).all()  # data lives in [-1, 1]


def test_epd5_tables_are_nearer_the_accurate_solution_than_amed5_and_ipndm(amed5, heun_solution):
    """The bundled EPD-Solver and EPD-Plugin (iPNDM) tables at NFE 5 (2 parallel points per interval) land nearer
    a 35-NFE Heun solution than both the bundled AMED-Solver and iPNDM at the same NFE, from the same noise; the
    EPD network also samples a training-free solver (its table unused)."""
    from amed_deploy.sampling import baseline_sampler

    epd = load_model(assets.MODEL, assets.BUNDLED["epd"][5])
    plugin = load_model(assets.MODEL, assets.BUNDLED["epd_ipndm"][5])
    errors = {
        "epd": _rmse(_sample(epd.network, epd.bundle.sampler), heun_solution),
        "epd_ipndm": _rmse(_sample(plugin.network, plugin.bundle.sampler), heun_solution),
        "amed": _rmse(_sample(amed5.network, amed5.bundle.sampler), heun_solution),
        "ipndm": _rmse(_sample(epd.network, baseline_sampler(epd.network.net, "ipndm", 5)), heun_solution),
    }
    # docs/RESULTS.md, 256 samples: EPD 0.78x and EPD-Plugin 0.84x the better of the two (0.0816 and 0.0879 vs
    # AMED's 0.1046); on these 10 images the ratios move by several percent, hence the looser bounds
    assert errors["epd"] < 0.85 * min(errors["amed"], errors["ipndm"]), errors
    assert errors["epd_ipndm"] < 0.95 * min(errors["amed"], errors["ipndm"]), errors


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory):
    """The demo's graph, exported once for this module (an export of the bundled model takes ~40 s on a CPU)."""
    from amed_deploy import demo

    folder = tmp_path_factory.mktemp("demo-cache")
    graph = demo.demo_graph(folder)
    assert graph == folder / "demo-fashion-mnist-amed5.onnx" and [p.name for p in folder.iterdir()] == [graph.name]
    assert demo._cached_graph_matches(graph, *_demo_hashes(), 5, 60)
    return graph


def test_demo_command_writes_a_labelled_grid(tmp_path, monkeypatch, demo_onnx):
    """The grid lands where asked; the graph is read from the cache folder, not the working directory
    (a cached copy of the module's export: the export itself is `demo_onnx`'s)."""
    from amed_deploy import demo

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / demo_onnx.name).write_bytes(demo_onnx.read_bytes())
    monkeypatch.setattr(demo, "cache_folder", lambda: cache)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    res = CliRunner().invoke(main, ["demo", "--out", "samples.png"])
    assert res.exit_code == 0, res.output
    assert "samples.png" in res.output
    img = Image.open(work / "samples.png")
    assert img.height >= len(CLASS_NAMES) * 32
    assert sorted(p.name for p in work.iterdir()) == ["samples.png"]
    graph = cache / demo_onnx.name
    stamp = graph.stat().st_mtime_ns
    # a second run needs --force for its own output, and reuses the cached graph
    res = CliRunner().invoke(main, ["demo", "--out", "samples.png"])
    assert res.exit_code == 2 and "already exists" in res.output
    assert CliRunner().invoke(main, ["demo", "--out", "samples.png", "--force"]).exit_code == 0
    assert graph.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("damage", ["garbage", "other-batch", "none"])
def test_demo_rebuilds_a_cached_graph_that_is_not_its_own(tmp_path, monkeypatch, demo_onnx, damage):
    """An unreadable cache, or a graph of another batch size under the demo's name, is exported again (the
    export stands in as a copy of the module's real one, which `demo_onnx` checked); its own graph is not."""
    import onnx

    from amed_deploy import demo
    from amed_deploy.metadata import GraphSpec

    folder = tmp_path / "cache"
    folder.mkdir()
    graph = folder / demo_onnx.name
    if damage == "garbage":
        graph.write_bytes(b"not an onnx file")
    else:
        model = onnx.load(demo_onnx)
        if damage == "other-batch":
            prop = next(p for p in model.metadata_props if p.key == "amed_deploy")
            spec = GraphSpec.from_json(prop.value)
            prop.value = dataclasses.replace(spec, batch_min=1, batch_opt=1, batch_max=1).to_json()
        onnx.save(model, graph)
    exports = []

    def export_onnx(network, out, **kwargs):
        exports.append(out)
        out.write_bytes(demo_onnx.read_bytes())

    monkeypatch.setattr("exporters.onnx_export.export_onnx", export_onnx)
    assert demo._cached_graph_matches(graph, *_demo_hashes(), 5, 60) == (damage == "none")
    assert demo.demo_graph(folder) == graph
    assert exports == ([] if damage == "none" else [graph])
    assert demo._cached_graph_matches(graph, *_demo_hashes(), 5, 60)


def _demo_hashes() -> tuple[str, str]:
    from amed_deploy.checkpoint.format import model_sha256
    from amed_deploy.checkpoint.load import load_checkpoint

    return model_sha256(load_checkpoint(assets.MODEL)), file_sha256(assets.PREDICTORS[5])
