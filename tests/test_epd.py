"""EPD-Solver and EPD-Plugin: steps derived by hand, the one batched call, labels repeated sample-major,
the table's transforms and records, NFE accounting, distillation, and the runtime on every CPU executor."""

from __future__ import annotations

import math

import pytest
import torch
from analytic import GaussianModel
from conftest import tiny_net

from amed_deploy.amed_network import AMEDNetwork, TorchModel, graph_spec
from amed_deploy.config import SamplerConfig
from amed_deploy.distill import DistillConfig, distill
from amed_deploy.epd_table import EPDConfig, EPDParams, EPDTable, check_values, parameter_count
from amed_deploy.errors import AmedError
from amed_deploy.solvers import SolverConfig, SolverState, evaluations_for, make_schedule, nfe_for, sample, step

T = [80.0, 6.9502, 1.2867, 0.002]  # the released NFE-5 grid (time_uniform, rho 1)


def _params(intervals: int) -> EPDParams:
    """A table with distinct points, peaked weights and scales off 1 (every term of the formula matters)."""
    r = torch.tensor([[0.03, 0.8], [0.4, 0.1], [0.6, 0.25]], dtype=torch.float64)[:intervals]
    w = torch.tensor([[0.87, 0.13], [0.3, 0.7], [0.5, 0.5]], dtype=torch.float64)[:intervals]
    c = torch.tensor([[0.99, 1.02], [1.01, 0.98], [1.0, 1.03]], dtype=torch.float64)[:intervals]
    a = torch.tensor([[0.95, 0.96], [1.04, 1.0], [0.97, 1.02]], dtype=torch.float64)[:intervals]
    return EPDParams(r, w, c, a)


@pytest.fixture()
def gaussian():
    g = torch.Generator().manual_seed(1)
    mu = 0.3 * torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    x = 6.0 * torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    return mu, x


def _by_hand(model: GaussianModel, x, t, t_next, direction, row) -> torch.Tensor:
    """EPD's update written out point by point, as the reference's sequential training path loops."""
    out = torch.zeros_like(x)
    for k in range(len(row.r)):
        r, w, c, a = (float(v[k]) for v in (row.r, row.weight, row.c, row.a))
        tau = t_next**r * t ** (1 - r)
        x_k = x + (tau - t) * direction
        g = (x_k - model.denoise(x_k, torch.full((x.shape[0],), a * tau, dtype=x.dtype))) / tau
        out = out + w * c * g
    return x + (t_next - t) * out


def test_epd_step_matches_the_formula_by_hand(gaussian):
    mu, x = gaussian
    model = GaussianModel(mu, 0.5, epd=_params(3))
    t, t_next = T[1], T[2]
    state = SolverState()
    got = step(model, x, T, 1, SolverConfig("epd"), state)
    d = (x - model.denoise(x, torch.full((3,), t, dtype=x.dtype))) / t
    torch.testing.assert_close(got, _by_hand(model, x, t, t_next, d, _params(3).row(1)))
    assert model.batches == [3, 6]  # d_n at batch B, then ONE call of batch K*B
    assert state.nfe == 2 and state.evaluations == 3


def test_epd_plugin_places_points_along_ipndm_direction(gaussian):
    """Second interval: AB2 direction (3 d_1 - d_0) / 2 places the points; only d_n joins the history."""
    mu, x0 = gaussian
    model = GaussianModel(mu, 0.5, epd=_params(3))
    config, state = SolverConfig("epd_ipndm"), SolverState()
    x1 = step(model, x0, T, 0, config, state)
    d0 = (x0 - model.denoise(x0, torch.full((3,), T[0], dtype=x0.dtype))) / T[0]
    torch.testing.assert_close(x1, _by_hand(model, x0, T[0], T[1], d0, _params(3).row(0)))
    assert len(state.slopes) == 1
    x2 = step(model, x1, T, 1, config, state)
    d1 = (x1 - model.denoise(x1, torch.full((3,), T[1], dtype=x0.dtype))) / T[1]
    torch.testing.assert_close(x2, _by_hand(model, x1, T[1], T[2], 1.5 * d1 - 0.5 * d0, _params(3).row(1)))
    assert len(state.slopes) == 2


def test_epd_with_equal_points_is_the_amed_solver_step(gaussian):
    """K points at one r with weights summing to 1 and c = a = 1 collapse to AMED's single point."""
    mu, x = gaussian
    t = make_schedule("time_uniform", 5, 0.002, 80.0)
    epd, _ = sample(GaussianModel(mu, 0.5, r=0.3), x, t, SolverConfig("epd", afs=True))
    amed, _ = sample(GaussianModel(mu, 0.5, r=0.3, c=1.0, a=1.0), x, t, SolverConfig("amed", afs=True))
    torch.testing.assert_close(epd, amed)


def test_parallel_call_repeats_labels_sample_major():
    """A class-conditional network: the batched call of K points per sample gives each point its own
    sample's label (the reference's batched sampler passes labels of batch B)."""
    net = tiny_net()
    table = EPDTable(3)
    network = AMEDNetwork(net, table)
    labels = torch.nn.functional.one_hot(torch.tensor([0, 2, 1]), 3).float()
    x = 20 * torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batched, _ = sample(TorchModel(network, labels), x, T, SolverConfig("epd", afs=True))
        alone = [sample(TorchModel(network, labels[i : i + 1]), x[i : i + 1], T, SolverConfig("epd", afs=True))[0]
                 for i in range(3)]  # fmt: skip
    torch.testing.assert_close(batched, torch.cat(alone), atol=1e-4, rtol=1e-4)


def test_nfe_is_parallel_and_evaluations_count_every_point():
    for n_points, nfe, total in ((3, 3, 5), (4, 5, 8), (5, 7, 11), (6, 9, 14)):  # EPD.md: 3N - 4 for K = 2
        assert nfe_for("epd", n_points, afs=True) == nfe_for("epd_ipndm", n_points, afs=True) == nfe
        assert evaluations_for("epd", n_points, afs=True) == total
    assert evaluations_for("amed", 4, afs=True) == nfe_for("amed", 4, afs=True)
    assert SamplerConfig.create("epd", 5, "time_uniform", (0.002, 80.0), True).num_points == 4


def test_table_transforms_and_size():
    torch.manual_seed(0)
    table = EPDTable(3, EPDConfig(scale_dir=0.05, scale_time=0.2))
    assert parameter_count(table) == 4 * 2 * 3
    p = table.params()
    torch.testing.assert_close(p.r, torch.sigmoid(table.r_raw))
    torch.testing.assert_close(p.weight.sum(1), torch.ones(3))
    torch.testing.assert_close(p.c, 0.95 + 0.1 * torch.sigmoid(table.c_raw / 2))
    torch.testing.assert_close(p.a, 0.8 + 0.4 * torch.sigmoid(table.a_raw / 2))
    assert EPDTable(2, EPDConfig(scale_time=0.0)).params().a.eq(1).all()
    again = EPDParams.from_values(p.values())
    torch.testing.assert_close(again.weight, p.weight.detach())


@pytest.mark.parametrize(
    "values,match",
    [
        ([], "non-empty"),
        ([[[0.5, 1.0, 1.0, 1.0]], [[0.5, 0.5, 1, 1], [0.5, 0.5, 1, 1]]], "same number"),
        ([[[1.0, 1.0, 1.0, 1.0]]], "out of range"),
        ([[[0.5, 0.6, 1.0, 1.0], [0.5, 0.6, 1.0, 1.0]]], "sum to 1"),
        ([[[0.5, float("nan"), 1.0, 1.0]]], "non-finite"),
        ([[[0.5, 1.0, 1.0]]], r"\[r, weight, c, a\]"),
    ],
)
def test_damaged_tables_are_refused(values, match):
    with pytest.raises(AmedError, match=match):
        check_values(values)


def test_graph_spec_records_the_table_and_covers_the_parallel_batch():
    network = AMEDNetwork(tiny_net(), EPDTable(3))
    sampler = SamplerConfig.create("epd", 5, "time_uniform", (0.002, 80.0), True)
    spec = graph_spec(network, sampler, "fp32", 4)
    assert spec.kind == "epd" and spec.tap is None and spec.afs_rca is None
    assert (spec.batch_min, spec.batch_opt, spec.batch_max) == (4, 4, 8)
    assert spec.call_batches(4) == (4, 8)
    assert spec.epd == network.predictor.params().values()
    with pytest.raises(AmedError, match="too large for this EPD graph"):
        spec.call_batches(5)
    from amed_deploy.metadata import GraphSpec

    assert GraphSpec.from_json(spec.to_json()) == spec
    short = sampler.to_dict() | {"nfe": 3, "num_points": 3, "t_steps": list(sampler.t_steps[:2]) + [0.002]}
    with pytest.raises(AmedError, match="EPD table has 3 intervals"):
        GraphSpec.from_dict(spec.to_dict() | {"sampler": short})


def test_distillation_learns_and_records_a_table(tmp_path):
    """Two batches of the published EPD recipe move the table, and the predictor file round-trips."""
    from amed_deploy.predictor_file import PredictorBundle, load_predictor, save_predictor

    net = tiny_net()
    cfg = DistillConfig.for_student("epd", nfe=3, batch=4, kimg=0.008, teacher_m=1, teacher_inner=1)
    assert (cfg.teacher, cfg.lr, cfg.lr_final, cfg.scale_dir) == ("heun", 0.2, 0.01, 0.05)
    torch.manual_seed(cfg.seed)
    untrained = EPDTable(2, EPDConfig()).params()
    network, sampler, losses = distill(net, cfg, progress=False)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert not torch.allclose(network.predictor.params().r, untrained.r)
    path = tmp_path / "epd3.pt"
    save_predictor(path, PredictorBundle(network.predictor, sampler, None, "0" * 64))
    loaded = load_predictor(path)
    assert loaded.tap is None and loaded.sampler == sampler
    torch.testing.assert_close(loaded.predictor.params().r, network.predictor.params().r)
    with pytest.raises(AmedError, match="has no predictor to train"):
        distill(net, DistillConfig.for_student("euler", nfe=3, batch=2, kimg=0.002), progress=False)


def test_epd_rule_for_which_losses_are_backpropagated():
    assert not DistillConfig.for_student("epd", nfe=5).every_step_loss(4)
    assert DistillConfig.for_student("epd", nfe=9).every_step_loss(6)
    assert DistillConfig.for_student("epd_ipndm", nfe=5).every_step_loss(4)
    with pytest.raises(AmedError, match="drop --tap"):
        distill(tiny_net(), DistillConfig.for_student("epd", nfe=3, tap="enc.8x8_block0"), progress=False)


def test_deployed_graph_matches_the_reference_on_every_cpu_executor(tmp_path):
    """Export the denoiser with the table in its metadata; ONNX Runtime (batch B and K*B bindings) and
    the PyTorch executor sample what the eager reference samples, labels and all."""
    from amed_deploy.runtime import Sampler
    from amed_deploy.sampling import reference_sample
    from exporters.onnx_export import export_onnx

    torch.manual_seed(3)
    network = AMEDNetwork(tiny_net(), EPDTable(3))
    sampler = SamplerConfig.create("epd", 5, "time_uniform", (0.002, 80.0), True)
    result = export_onnx(network, tmp_path / "epd5.onnx", sampler=sampler, batch=2)
    assert (result.spec.kind, result.spec.batch_min, result.spec.batch_max) == ("epd", 2, 4)
    want, labels = reference_sample(network, sampler, seed=7, batch=2, classes=[2, 0])
    smp = Sampler.load(result.path)
    assert sorted(smp.executor.buffers) == [2, 4] and smp.config == sampler
    out = smp.sample(seed=7, classes=[2, 0])
    torch.testing.assert_close(out.labels, labels)
    torch.testing.assert_close(out.images, want, atol=2e-3, rtol=1e-3)
    with pytest.raises(AmedError, match="too large for this EPD graph"):
        Sampler.load(result.path, batch=3)
    # its denoiser under a training-free solver: no K*B call, so no K*B buffers or binding are made, and a
    # batch whose K*B call would not fit the graph's range is fine
    euler = Sampler.load(result.path, solver="euler", nfe=4)
    assert sorted(euler.executor.buffers) == [2] and sorted(euler.executor.bindings) == [2]
    want, _ = reference_sample(AMEDNetwork(network.net), euler.config, seed=7, batch=2, classes=[2, 0])
    torch.testing.assert_close(euler.sample(seed=7, classes=[2, 0]).images, want, atol=2e-3, rtol=1e-3)
    euler3 = Sampler.load(result.path, solver="euler", nfe=4, batch=3)
    assert sorted(euler3.executor.buffers) == [3]
    want, _ = reference_sample(AMEDNetwork(network.net), euler3.config, seed=7, batch=3, classes=[2, 0, 1])
    torch.testing.assert_close(euler3.sample(seed=7, classes=[2, 0, 1]).images, want, atol=2e-3, rtol=1e-3)


def test_checkpoint_with_epd_predictor_samples_like_the_reference(tiny_ckpt, epd_predictor):
    """The PyTorch executor from checkpoint + predictor file: both call batches bound, same images."""
    from amed_deploy.runtime import Sampler
    from amed_deploy.sampling import load_model, reference_sample

    loaded = load_model(tiny_ckpt, epd_predictor)
    want, _ = reference_sample(loaded.network, loaded.bundle.sampler, seed=4, batch=3, classes=[1, 2, 0])
    smp = Sampler.load(tiny_ckpt, predictor=epd_predictor, batch=3)
    assert sorted(smp.executor.buffers) == [3, 6] and smp.spec.kind == "epd"
    torch.testing.assert_close(smp.sample(seed=4, classes=[1, 2, 0]).images, want)
    with pytest.raises(AmedError, match="distilled for epd"):
        Sampler.load(tiny_ckpt, predictor=epd_predictor, solver="amed")


def test_tensorrt_gets_one_profile_per_call_batch():
    from exporters.trt_build import profile_shapes

    network = AMEDNetwork(tiny_net(), EPDTable(3))
    spec = graph_spec(network, SamplerConfig.create("epd", 5, "time_uniform", (0.002, 80.0), True), "fp16", 4)
    profiles = profile_shapes(spec)
    assert [p["x"] for p in profiles] == [[[4, 1, 16, 16], [n, 1, 16, 16], [8, 1, 16, 16]] for n in (4, 8)]
