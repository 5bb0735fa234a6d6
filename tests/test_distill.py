"""Distillation lowers the error to the teacher on held-out noise; AMED-Plugin sampling; the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_DISTILL, TINY_KWARGS, tiny_net
from PIL import Image

from amed_deploy.amed_network import AMEDNetwork
from amed_deploy.cli import main
from amed_deploy.distill import HELD_OUT_SEED, DistillConfig, distill, endpoint_rmse
from amed_deploy.errors import AmedError
from amed_deploy.predictor import AMEDPredictor
from amed_deploy.sampling import baseline_sampler, reference_sample
from amed_deploy.solvers import SolverConfig, solver_names

HELD_OUT = range(HELD_OUT_SEED, HELD_OUT_SEED + 24)  # never a training image's seed


def test_distillation_beats_dpm_solver_2_on_held_out_noise(distilled):
    network, sampler, losses, _ = distilled
    assert sampler.solver == "amed" and sampler.nfe == 5 and sampler.num_points == 4 and sampler.afs
    trained = endpoint_rmse(network, sampler.solver_config, sampler, TINY_DISTILL, HELD_OUT, 8)
    dpm2 = endpoint_rmse(network, SolverConfig("dpm2", afs=True), sampler, TINY_DISTILL, HELD_OUT, 8)
    # the untrained predictor (fresh Kaiming init, same seed) at the same NFE, for completeness
    torch.manual_seed(TINY_DISTILL.seed)
    untrained = AMEDNetwork(network.net, AMEDPredictor(network.predictor.config), network.tap)
    fresh = endpoint_rmse(untrained, sampler.solver_config, sampler, TINY_DISTILL, HELD_OUT, 8)
    assert trained < 0.5 * dpm2, (trained, dpm2)
    assert trained < 0.5 * fresh, (trained, fresh)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_distillation_leaves_the_network_unchanged(distilled, tiny_ckpt):
    from amed_deploy.checkpoint.load import load_checkpoint

    network, *_ = distilled
    saved = load_checkpoint(tiny_ckpt).state_dict
    assert all(torch.equal(saved[k], v) for k, v in network.net.state_dict().items())
    assert not any(p.requires_grad for p in network.net.parameters())


@pytest.mark.parametrize("student", ["amed", "epd"])
def test_one_teacher_solve_for_many_batches_trains_as_per_batch_solves(tiny_ckpt, student):
    """The teacher solves several training batches at once; every batch still gets its own seed's noise,
    labels and teacher states, so the losses and the predictor equal those of one solve per batch (to
    float rounding)."""
    from amed_deploy.checkpoint.build import build_model
    from amed_deploy.checkpoint.load import load_checkpoint

    net = build_model(load_checkpoint(tiny_ckpt))
    cfg = DistillConfig.for_student(student, nfe=5, batch=3, kimg=0.015, teacher_m=1, teacher_inner=1)
    results = []
    for per_solve in (1, 2):  # 5 batches: solves of 1 batch each, then of 2, 2 and 1
        network, _, losses = distill(net, cfg, progress=False, teacher_batch=per_solve * cfg.batch)
        results.append((losses, network.predictor.state_dict()))
    (one, pred_one), (two, pred_two) = results
    assert len(one) == 5 and np.allclose(one, two, rtol=1e-4)
    assert all(torch.allclose(pred_one[k], pred_two[k], rtol=1e-4, atol=1e-5) for k in pred_one)


@pytest.mark.parametrize("student", [s for s in solver_names(uses_predictor=True) if s != "amed"])
def test_plugin_students_train_and_sample(tiny_ckpt, student):
    from amed_deploy.checkpoint.build import build_model
    from amed_deploy.checkpoint.load import load_checkpoint

    net = build_model(load_checkpoint(tiny_ckpt))
    cfg = DistillConfig(student=student, nfe=5, afs=True, batch=4, kimg=0.012, schedule="polynomial")
    network, sampler, losses = distill(net, cfg, progress=False)
    assert sampler.solver == student and len(losses) == 3 and np.isfinite(losses).all()
    images, labels = reference_sample(network, sampler, seed=0, batch=3, classes=[0, 1, 2])
    assert images.shape == (3, 1, 16, 16) and torch.isfinite(images).all()
    assert labels.argmax(1).tolist() == [0, 1, 2]


@pytest.mark.parametrize("student", solver_names(uses_predictor=True))
def test_every_amed_solver_distils_end_to_end(tmp_path, tiny_ckpt, student, monkeypatch):
    """`distill --student S` trains (finite losses) and writes S<NFE>.pt by default, whose record says S: the
    formula the predictor was trained with is the one it will run."""
    from amed_deploy.checkpoint.format import model_sha256
    from amed_deploy.checkpoint.load import load_checkpoint
    from amed_deploy.config import SamplerConfig
    from amed_deploy.predictor_file import load_predictor

    monkeypatch.chdir(tmp_path)
    args = ["distill", "--ckpt", str(tiny_ckpt), "--student", student, "--nfe", "5", "--batch", "4", "--kimg", "0.008"]
    res = CliRunner().invoke(main, [*args, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert f"wrote {student}5.pt: {student} NFE 5" in res.output
    bundle = load_predictor(tmp_path / f"{student}5.pt", model_sha256=model_sha256(load_checkpoint(tiny_ckpt)))
    sampler = bundle.sampler
    assert sampler.solver == student == bundle.training["distill"]["student"]
    assert sampler == SamplerConfig.create(student, 5, "time_uniform", (sampler.sigma_min, sampler.sigma_max), True)
    assert bundle.training["batches_trained"] == 2 and np.isfinite(bundle.training["final_loss"])
    assert np.isfinite(bundle.training["held_out_rmse"])


def test_plugin_distillation_beats_its_untrained_predictor(tiny_ckpt):
    """The iPNDM plugin learns while continuing from its own outputs (multistep history)."""
    from dataclasses import replace

    from amed_deploy.checkpoint.build import build_model
    from amed_deploy.checkpoint.load import load_checkpoint

    net = build_model(load_checkpoint(tiny_ckpt))
    cfg = replace(TINY_DISTILL, student="amed_ipndm", kimg=0.24)
    network, sampler, losses = distill(net, cfg, progress=False)
    trained = endpoint_rmse(network, sampler.solver_config, sampler, cfg, HELD_OUT, 8)
    torch.manual_seed(cfg.seed)
    untrained = AMEDNetwork(network.net, AMEDPredictor(network.predictor.config), network.tap)
    fresh = endpoint_rmse(untrained, sampler.solver_config, sampler, cfg, HELD_OUT, 8)
    assert trained < 0.7 * fresh, (trained, fresh)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_distill_validation():
    net = tiny_net()
    with pytest.raises(AmedError, match="no predictor to train"):
        distill(net, DistillConfig(student="heun", nfe=6, afs=False, kimg=0.001), progress=False)
    with pytest.raises(AmedError, match="NFE 4 is impossible"):
        distill(net, DistillConfig(nfe=4, afs=True, kimg=0.001), progress=False)


def test_class_labels_change_samples(distilled):
    network, sampler, *_ = distilled
    a, _ = reference_sample(network, sampler, seed=0, batch=2, classes=0)
    b, _ = reference_sample(network, sampler, seed=0, batch=2, classes=2)
    assert (a - b).abs().max() > 1e-3
    with pytest.raises(AmedError, match="out of range"):
        reference_sample(network, sampler, seed=0, batch=2, classes=3)


class CountingCompile(torch.nn.Module):
    """Stands in for torch.compile's result (an nn.Module wrapping the original, attributes delegated):
    records the batch of every call."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.wrapped = module
        self.batches: list[int] = []

    def forward(self, x, *args, **kwargs):
        self.batches.append(x.shape[0])
        return self.wrapped(x, *args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.wrapped, name)


def test_compiled_distillation_runs_the_unet_through_the_compiled_module(tiny_ckpt, monkeypatch):
    """distill --compile: the teacher, the student and the held-out check all call the U-Net through what
    torch.compile returned (a counting stand-in: compiling takes minutes on a CPU), the predictor is the
    one an uncompiled run learns, and the caller's network gets its own U-Net back."""
    from amed_deploy.checkpoint.build import build_model
    from amed_deploy.checkpoint.load import load_checkpoint
    from amed_deploy.distill import distill_predictor

    net = build_model(load_checkpoint(tiny_ckpt))
    unet = net.model
    cfg = DistillConfig.for_student("epd", nfe=3, batch=2, kimg=0.004, teacher_m=1, teacher_inner=1)
    plain = distill_predictor(net, "0" * 64, cfg, "cpu", progress=False)
    made = []
    monkeypatch.setattr(torch, "compile", lambda module: made.append(CountingCompile(module)) or made[-1])
    fast = distill_predictor(net, "0" * 64, cfg, "cpu", progress=False, compile=True)
    assert net.model is unet and len(made) == 1
    # the teacher's one solve for both batches (4), the student's calls of B and 2B, the held-out solves
    assert {4, 2} <= set(made[0].batches)
    expected = plain.predictor.state_dict()
    assert all(torch.equal(expected[k], v) for k, v in fast.predictor.state_dict().items())


def test_cli_distill_and_sample(tmp_path, tiny_ckpt):
    runner = CliRunner()
    pred = tmp_path / "p.pt"
    res = runner.invoke(
        main,
        [
            "distill",
            "--ckpt",
            str(tiny_ckpt),
            "--nfe",
            "3",
            "--batch",
            "4",
            "--kimg",
            "0.008",
            "--out",
            str(pred),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "held-out RMSE" in res.output and pred.exists()
    res = runner.invoke(main, ["distill", "--ckpt", str(tiny_ckpt), "--nfe", "3", "--out", str(pred)])
    assert res.exit_code == 2 and "already exists" in res.output
    res = runner.invoke(main, ["distill", "--ckpt", str(tiny_ckpt), "--nfe", "4", "--out", str(tmp_path / "x.pt")])
    assert res.exit_code == 2 and "NFE 4 is impossible" in res.output and not (tmp_path / "x.pt").exists()

    grid, npz = tmp_path / "grid.png", tmp_path / "s.npz"
    res = runner.invoke(
        main,
        [
            "sample",
            "--ckpt",
            str(tiny_ckpt),
            "--predictor",
            str(pred),
            "--batch",
            "4",
            "--out",
            str(grid),
            "--npz",
            str(npz),
            "--class",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert Image.open(grid).size[0] > 0
    arrays = np.load(npz)
    assert arrays["images"].shape == (4, 16, 16, 1) and arrays["labels"].tolist() == [1, 1, 1, 1]
    res = runner.invoke(
        main,
        [
            "sample",
            "--ckpt",
            str(tiny_ckpt),
            "--solver",
            "ipndm",
            "--nfe",
            "5",
            "--batch",
            "2",
            "--out",
            str(tmp_path / "b.png"),
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["sample", "--ckpt", str(tiny_ckpt), "--predictor", str(pred), "--nfe", "5"])
    assert res.exit_code == 2 and "distilled for NFE 3" in res.output


def test_predictor_for_another_checkpoint_is_refused(tmp_path, distilled):
    from amed_deploy.checkpoint.format import Checkpoint, save_checkpoint

    other = tmp_path / "other.pt"
    save_checkpoint(Checkpoint("EDMPrecond", dict(TINY_KWARGS), tiny_net(seed=1).state_dict(), {}), other)
    *_, pred = distilled
    res = CliRunner().invoke(
        main, ["sample", "--ckpt", str(other), "--predictor", str(pred), "--out", str(tmp_path / "g.png")]
    )
    assert res.exit_code == 2 and "distilled for checkpoint" in res.output
    assert not (tmp_path / "g.png").exists()


def test_baseline_sampler_grid():
    cfg = baseline_sampler(tiny_net(), "dpmpp3m", 5)
    assert cfg.num_points == 6 and cfg.schedule == "polynomial"


def test_cli_distill_time_budget_keeps_what_was_learned(tmp_path, tiny_ckpt):
    """--minutes stops after the first batch that passes the budget and says so; the estimate is printed."""
    pred = tmp_path / "p.pt"
    args = ["distill", "--ckpt", str(tiny_ckpt), "--nfe", "3", "--batch", "4", "--kimg", "0.4", "--out", str(pred)]
    res = CliRunner().invoke(main, [*args, "--minutes", "0.0001", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "distill: 100 batches of 4" in res.output and "stopping after --minutes" in res.output
    assert "trained 0.004 of 0.4 kimg" in res.output
    record = torch.load(pred, weights_only=True)["training"]
    assert record["batches_trained"] == 1 and record["kimg_trained"] == 0.004
