"""One way to build a sampler configuration, over the sigma range every graph records: a solver chosen at
run time gets the same time points from a checkpoint (PyTorch) as from its exported graph."""

from __future__ import annotations

import pytest
from presets import TINY_SONGUNET_KWARGS

from amed_deploy.amed_network import AMEDNetwork, graph_spec
from amed_deploy.config import EDM_SIGMA_RANGE, SamplerConfig, sigma_range
from amed_deploy.errors import AmedError
from amed_deploy.metadata import GraphSpec
from amed_deploy.networks import VEPrecond
from amed_deploy.runtime.sampler import resolve_sampler
from amed_deploy.sampling import baseline_sampler


def test_a_ve_denoiser_graph_gets_the_checkpoints_schedule():
    net = VEPrecond(**TINY_SONGUNET_KWARGS)  # sigma_min 0.02: not EDM's 0.002
    spec = GraphSpec.from_json(graph_spec(AMEDNetwork(net), None, "fp32", 2).to_json())
    assert spec.sampler is None and spec.sigma_range == sigma_range(net) == (0.02, 80.0)
    from_graph = resolve_sampler(spec, "ipndm", 5, "polynomial", False)
    assert from_graph == baseline_sampler(net, "ipndm", 5) and from_graph.t_steps[-1] == pytest.approx(0.02)


def test_a_version_1_record_reads_its_range_as_version_1_readers_did():
    cfg = SamplerConfig.create("amed", 5, "time_uniform", (0.01, 50.0), True)
    for sampler, expected in ((None, EDM_SIGMA_RANGE), (cfg, (0.01, 50.0))):
        d = GraphSpec("amed" if sampler else "denoiser", "fp32", (3, 8, 8), 0, 1, 1, 1, sampler=sampler).to_dict()
        del d["sigma_range"]
        d["format_version"] = 1
        assert GraphSpec.from_dict(d).sigma_range == expected
    d["format_version"] = 2
    with pytest.raises(AmedError, match="sigma_range"):
        GraphSpec.from_dict(d)


@pytest.mark.parametrize("bad", [[0.0, 80.0], [80.0, 0.002], [0.002], ["0.002", 80.0]])
def test_a_bad_sigma_range_is_refused(bad):
    d = GraphSpec("denoiser", "fp32", (3, 8, 8), 0, 1, 1, 1).to_dict()
    d["sigma_range"] = bad
    with pytest.raises(AmedError, match="sigma"):
        GraphSpec.from_dict(d)


def test_an_amed_graphs_own_solver_refuses_another_schedule_or_afs():
    cfg = SamplerConfig.create("amed", 5, "time_uniform", EDM_SIGMA_RANGE, True)
    spec = GraphSpec("amed", "fp32", (3, 8, 8), 0, 1, 1, 1, sampler=cfg)
    assert resolve_sampler(spec, "amed", 5, "time_uniform", True) == cfg
    assert resolve_sampler(spec, None, None) == cfg
    with pytest.raises(AmedError, match="schedule time_uniform, not polynomial"):
        resolve_sampler(spec, "amed", None, "polynomial")
    with pytest.raises(AmedError, match="afs True, not False"):
        resolve_sampler(spec, "amed", 5, afs=False)


def test_an_amed_graphs_own_solver_refuses_other_solver_options():
    cfg = SamplerConfig.create("amed_dpmpp", 5, "time_uniform", EDM_SIGMA_RANGE, True)
    spec = GraphSpec("amed", "fp32", (3, 8, 8), 0, 1, 1, 1, sampler=cfg)
    assert (cfg.max_order, cfg.predict_x0, cfg.lower_order_final, cfg.thresholding) == (3, True, True, True)
    assert resolve_sampler(spec, "amed_dpmpp", 5, options={"max_order": 3, "thresholding": True}) == cfg
    assert resolve_sampler(spec, "amed_dpmpp", 5, options={"max_order": None}) == cfg  # None: not given
    with pytest.raises(AmedError, match="exported with thresholding True, not False: .* distilled for that formula"):
        resolve_sampler(spec, "amed_dpmpp", None, options={"thresholding": False})
    with pytest.raises(AmedError, match="exported with max_order 3, not 2"):
        resolve_sampler(spec, "amed_dpmpp", None, options={"max_order": 2})
    amed = GraphSpec(
        "amed",
        "fp32",
        (3, 8, 8),
        0,
        1,
        1,
        1,
        sampler=SamplerConfig.create("amed", 5, "time_uniform", EDM_SIGMA_RANGE, True),
    )
    with pytest.raises(AmedError, match=r"^amed takes no predict_x0 option \(it applies to dpmpp2m"):
        resolve_sampler(amed, "amed", None, options={"predict_x0": True})


def test_a_predictor_is_refused_for_another_formula():
    cfg = SamplerConfig.create("amed_ipndm_uneven", 5, "time_uniform", EDM_SIGMA_RANGE, True)
    spec = GraphSpec("amed", "fp32", (3, 8, 8), 0, 1, 1, 1, sampler=cfg)
    with pytest.raises(AmedError) as refused:
        resolve_sampler(spec, "amed_ipndm", None)
    assert str(refused.value) == (
        "this predictor was distilled for amed_ipndm_uneven (AMED-Plugin (iPNDM), uneven-grid weights), not "
        "amed_ipndm: the formulas differ; distil one for amed_ipndm (amed-deploy distill --student amed_ipndm)"
    )
    assert resolve_sampler(spec, "amed-ipndm-uneven", 5) == cfg  # its own name, in any spelling
    assert resolve_sampler(spec, "ipndm", 5).solver == "ipndm"  # a training-free solver on its denoiser output
    denoiser = GraphSpec("denoiser", "fp32", (3, 8, 8), 0, 1, 1, 1)
    with pytest.raises(AmedError, match=r"solver amed_ipndm needs a predictor distilled for it \(amed-deploy distill"):
        resolve_sampler(denoiser, "amed_ipndm", 5)
