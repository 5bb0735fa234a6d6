"""The second bundled model, class-conditional CIFAR-10: small, RGB, its predictors bound to it, a learned
solver nearer the accurate ODE solution than every training-free one at NFE 3 and 5, and its demo one
option away."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from PIL import Image

from amed_deploy import assets, cifar10
from amed_deploy.checkpoint.format import model_sha256
from amed_deploy.checkpoint.load import load_checkpoint
from amed_deploy.cli import main
from amed_deploy.evaluation.table import baseline_afs
from amed_deploy.predictor_file import load_predictor
from amed_deploy.sampling import baseline_sampler, load_model, reference_sample

MODEL = assets.DEMO_MODELS["cifar10"]
pytestmark = pytest.mark.skipif(
    bool(assets.missing("cifar10")), reason="bundled CIFAR-10 files are not in this checkout"
)

# the training-free solvers of docs/RESULTS.md's tables (each with AFS as there: baseline_afs)
TRAINING_FREE = ("euler", "heun", "dpm2", "ipndm", "dpmpp3m")


def test_cifar10_bundle_is_small_rgb_and_its_predictors_are_bound_to_it():
    assert MODEL.file.stat().st_size <= 15e6  # fp16 weights
    ckpt = load_checkpoint(MODEL.file, dtype=None)
    kwargs = ckpt.network_kwargs
    assert (kwargs["img_channels"], kwargs["img_resolution"], kwargs["label_dim"]) == (3, 32, 10)
    assert MODEL.class_names == cifar10.CLASS_NAMES and ckpt.metadata["training"]["dataset"] == "cifar10"
    sha = model_sha256(ckpt)
    assert set(MODEL.bundled) == {"amed", "amed_ipndm", "epd", "epd_ipndm"}
    for solver, files in MODEL.bundled.items():
        assert sorted(files) == [3, 5, 7, 9]  # every NFE of the quality table
        for nfe, path in files.items():
            bundle = load_predictor(path, model_sha256=sha)  # refuses a predictor of another model
            assert (bundle.sampler.solver, bundle.sampler.nfe) == (solver, nfe)
            assert path.parent == MODEL.folder and path.name == f"{solver}{nfe}.pt"
            assert assets.resolve(f"cifar10-{solver}{nfe}") == path  # short names carry the model's prefix
    assert assets.resolve("cifar10") == MODEL.file and assets.resolve("amed5") == assets.PREDICTORS[5]


def _rmse(a, b) -> float:
    return (a - b).square().mean().sqrt().item()


CLASSES = list(range(10))  # one image per class


def _sample(network, cfg):
    return reference_sample(network, cfg, seed=7, batch=len(CLASSES), classes=CLASSES)[0]


@pytest.fixture(scope="module")
def bare():
    return load_model(MODEL.file)


@pytest.fixture(scope="module")
def accurate(bare):
    """The accurate ODE solution: Heun at NFE 35 from the shared seed."""
    return _sample(bare.network, baseline_sampler(bare.network.net, "heun", 34))


@pytest.mark.parametrize("nfe", [3, 5])
def test_a_learned_solver_beats_every_training_free_one(nfe, bare, accurate):
    """One image per class from one seed: the bundled EPD-Solver and EPD-Plugin tables land nearer a
    35-NFE Heun solution from the same noise than the best training-free solver of the quality table at the
    same NFE, by a margin."""
    net = bare.network.net
    free = {
        solver: _rmse(
            _sample(bare.network, baseline_sampler(net, solver, nfe, afs=baseline_afs(solver, nfe))), accurate
        )
        for solver in TRAINING_FREE
    }
    best_free = min(free.values())
    for solver in ("epd", "epd_ipndm"):
        model = load_model(MODEL.file, MODEL.bundled[solver][nfe])
        images = _sample(model.network, model.bundle.sampler)
        assert _rmse(images, accurate) < 0.85 * best_free, (solver, _rmse(images, accurate), free)
        assert images.abs().max() < 2.5  # data lives in [-1, 1]


def test_demo_samples_the_cifar10_model_on_request(tmp_path, monkeypatch):
    """`demo --model cifar10` exports and runs that model's own graph (not the default's) and writes one
    row per CIFAR-10 class."""
    from amed_deploy import demo

    monkeypatch.setattr(demo, "cache_folder", lambda: tmp_path / "cache")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["demo", "--model", "cifar10", "--out", "grid.png"])
    assert res.exit_code == 0, res.output
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["demo-cifar10-amed5.onnx"]
    with Image.open(tmp_path / "grid.png") as img:
        assert img.mode == "RGB" and img.height >= 10 * 32
        colours = img.convert("RGB").getextrema()
        assert all(hi - lo > 100 for lo, hi in colours)  # real colour images, not a flat or grey grid
