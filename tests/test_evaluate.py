"""Evaluation end to end on the tiny random network: sampling for FID, RMSE against a shared reference,
trajectory PCA, the results grid (with a stand-in Inception), the table, the plots and `eval`."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_net
from PIL import Image

from amed_deploy.amed_network import AMEDNetwork
from amed_deploy.cli import main
from amed_deploy.errors import AmedError
from amed_deploy.evaluation.pca import trajectory_pca
from amed_deploy.evaluation.plots import line_chart, plot_fid_vs_nfe, plot_pca
from amed_deploy.evaluation.quality import ReferenceCache, fid_of, rmse_to_reference, sample_many
from amed_deploy.evaluation.report import render_results_markdown
from amed_deploy.evaluation.table import (
    Cell,
    baseline_afs,
    default_solvers,
    evaluate_cells,
    find_predictors,
    plan_cells,
    predictor_templates,
)
from amed_deploy.fid import Inception
from amed_deploy.sampling import baseline_sampler, reference_sample
from amed_deploy.solvers import solver_names

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def network():
    return AMEDNetwork(tiny_net())


@pytest.fixture(scope="module")
def predictor_file(tmp_path_factory, tiny_ckpt):
    """An (untrained) AMED-Solver NFE 5 predictor for the tiny checkpoint: evaluation does not care
    how good it is, and training one would cost seconds."""
    from amed_deploy.amed_network import default_tap
    from amed_deploy.checkpoint.build import build_model
    from amed_deploy.checkpoint.format import model_sha256
    from amed_deploy.checkpoint.load import load_checkpoint
    from amed_deploy.distill import DistillConfig, sampler_for
    from amed_deploy.files import file_sha256
    from amed_deploy.predictor import AMEDPredictor, PredictorConfig
    from amed_deploy.predictor_file import PredictorBundle, save_predictor

    net = build_model(load_checkpoint(tiny_ckpt))
    torch.manual_seed(0)
    bundle = PredictorBundle(
        AMEDPredictor(PredictorConfig()),
        sampler_for(net, DistillConfig(nfe=5)),
        default_tap(net),
        file_sha256(tiny_ckpt),
        model_sha256=model_sha256(load_checkpoint(tiny_ckpt)),
    )
    path = tmp_path_factory.mktemp("pred") / "amed5.pt"
    save_predictor(path, bundle)
    return path, bundle.sampler


class MeanFeatures(torch.nn.Module):
    """A stand-in feature network: 16 features from pooled pixels (FID's 2048x2048 square root would
    take seconds on the CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)  # [B, 48]
        return pooled[:, :16] * torch.linspace(0.5, 1.5, 16) + pooled[:, 16:32] ** 2 / 255


def test_sample_many_seeds_and_classes(network):
    cfg = baseline_sampler(network.net, "euler", 3)
    images, labels = sample_many(network, cfg, 7, 3, seed0=5)
    assert images.dtype == torch.uint8 and images.shape == (7, 1, 16, 16)
    assert labels.tolist() == [0, 1, 2, 0, 1, 2, 0]  # classes cycle over the sample index
    # batch 1 (samples 3..5) is reference_sample from seed 5 + 3 (one seed per sample) with those classes
    x, _ = reference_sample(network, cfg, 8, 3, [0, 1, 2])
    expect = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(images[3:6], expect)


def test_rmse_shares_one_reference(network):
    cfgs = {
        "euler3": baseline_sampler(network.net, "euler", 3),
        "heun3": baseline_sampler(network.net, "heun", 3, afs=True),
        "ipndm12": baseline_sampler(network.net, "ipndm", 12),
    }
    cache = ReferenceCache("heun", 40)
    r = rmse_to_reference(network, cfgs, 6, 3, 0, cache=cache)
    assert set(r) == set(cfgs) and all(v > 0 and math.isfinite(v) for v in r.values())
    assert len(cache._store) == 2  # one reference per seed batch, shared by all three solvers
    assert r["ipndm12"] < r["euler3"]  # more NFE, better solver: closer to the reference
    # a second call with the same cache reuses it and gives the same numbers
    again = rmse_to_reference(network, {"euler3": cfgs["euler3"]}, 6, 3, 0, cache=cache)
    assert again["euler3"] == pytest.approx(r["euler3"], rel=1e-12) and len(cache._store) == 2
    # the reference itself converges: Heun with many points against the adaptive solver
    fine = rmse_to_reference(
        network, {"heun": baseline_sampler(network.net, "heun", 78)}, 3, 3, 0, reference="adaptive"
    )
    assert fine["heun"] < 0.02 < r["euler3"]


def test_rmse_is_zero_for_the_reference_itself(network):
    cfg = baseline_sampler(network.net, "heun", 2 * (17 - 1))  # 17 points
    r = rmse_to_reference(network, {"same": cfg}, 3, 3, 0, reference_points=17)
    assert r["same"] < 1e-6


def test_trajectory_pca(network):
    pca = trajectory_pca(network, 5, 12, seed=0, batch=2, top_k=4)
    assert pca.ratios.shape == (5, 4)
    assert np.all(np.diff(pca.ratios, axis=1) <= 1e-12)  # sorted
    assert np.all(pca.cumulative <= 1 + 1e-9)
    top = pca.mean_top
    assert 0 < top[1] <= top[2] <= top[3] <= 1 + 1e-9
    d = pca.to_dict()
    assert d["n_traj"] == 5 and len(d["per_trajectory_top"]["1"]) == 5
    json.dumps(d)


def test_pca_of_a_straight_line_is_one_component():
    # a denoiser that always returns 0 makes dx/dt = x/t: x stays on the ray through x_0
    class Zero(torch.nn.Module):
        img_channels, img_resolution, label_dim = 1, 4, 0
        sigma_min, sigma_max = 0.002, 80.0

        def forward(self, x, sigma, class_labels=None, taps=()):
            return torch.zeros_like(x)

    pca = trajectory_pca(AMEDNetwork(Zero()), 3, 10, top_k=3)
    np.testing.assert_allclose(pca.ratios[:, 0], 1.0, atol=1e-9)


def test_scaled_pca_sees_two_directions_in_a_line_off_the_origin():
    # D(x, t) = c makes x_t = c + (x_0 - c) t / t_0: one straight line (raw PCA: one component);
    # dividing by sqrt(1 + t^2) bends it inside span{c, x_0 - c} (exactly two components)
    class Constant(torch.nn.Module):
        img_channels, img_resolution, label_dim = 1, 4, 0
        sigma_min, sigma_max = 0.002, 80.0

        def forward(self, x, sigma, class_labels=None, taps=()):
            return torch.full_like(x, 0.7)

    raw = trajectory_pca(AMEDNetwork(Constant()), 3, 24, top_k=3)
    scaled = trajectory_pca(AMEDNetwork(Constant()), 3, 24, top_k=3, scaled=True)
    np.testing.assert_allclose(raw.ratios[:, 0], 1.0, atol=1e-9)
    assert np.all(scaled.ratios[:, 0] < 0.999)
    np.testing.assert_allclose(scaled.cumulative[:, 1], 1.0, atol=1e-9)


def test_baseline_afs_rule():
    assert baseline_afs("heun", 5) and baseline_afs("dpm2", 3)
    assert not baseline_afs("heun", 6) and not baseline_afs("euler", 5) and not baseline_afs("ipndm", 3)


def test_plan_cells_and_predictors(network, tmp_path, predictor_file, tiny_ckpt):
    from amed_deploy.checkpoint.format import model_sha256
    from amed_deploy.checkpoint.load import load_checkpoint

    pred_path, sampler = predictor_file  # AMED-Solver, NFE 5
    (tmp_path / "amed5.pt").write_bytes(pred_path.read_bytes())
    found = find_predictors(["amed{nfe}.pt", "amed_ipndm{nfe}.pt"], [3, 5], tmp_path)
    assert found == {("amed", 5): tmp_path / "amed5.pt"}
    with pytest.raises(Exception, match="nfe"):
        find_predictors(["amed.pt"], [5])
    sha = model_sha256(load_checkpoint(tiny_ckpt))
    cells = plan_cells(network, sha, ["heun", "euler", "amed"], [1, 3, 5], found)
    by = {(c.solver, c.nfe): c for c in cells}
    assert by[("heun", 3)].cfg.afs and by[("heun", 3)].cfg.num_points == 3
    assert not by[("euler", 3)].cfg.afs and by[("euler", 3)].cfg.schedule == "polynomial"
    assert by[("amed", 5)].cfg == sampler and by[("amed", 5)].network.predictor is not None
    assert by[("amed", 5)].network.net is network.net  # the U-Net is shared, not reloaded
    assert by[("amed", 3)].cfg is None and "no amed predictor" in by[("amed", 3)].note
    assert by[("heun", 1)].cfg is not None  # 1 NFE: one AFS Euler predictor + one correction


def _as_version_1_plugin(src, dst):
    """A predictor file as versions before #17 wrote one for "amed_ipndm" (today's amed_ipndm_uneven)."""
    payload = torch.load(src, weights_only=True)
    payload["format_version"] = 1
    payload["sampler"] = {**payload["sampler"], "solver": "amed_ipndm", "max_order": 4}
    torch.save(payload, dst)


def test_a_predictor_is_used_for_the_formula_its_record_names(network, tmp_path, predictor_file, tiny_ckpt):
    """A file whose name says amed_ipndm but whose record says another solver is never run as amed_ipndm: its
    cell says why, and the file counts for its own solver."""
    from amed_deploy.checkpoint.format import model_sha256
    from amed_deploy.checkpoint.load import load_checkpoint

    pred_path, sampler = predictor_file  # AMED-Solver, NFE 5
    sha = model_sha256(load_checkpoint(tiny_ckpt))
    _as_version_1_plugin(pred_path, tmp_path / "amed_ipndm5.pt")
    found = find_predictors(predictor_templates(), [5], tmp_path)
    assert found == {("amed_ipndm_uneven", 5): tmp_path / "amed_ipndm5.pt"}
    assert default_solvers(found) == [*solver_names(uses_predictor=False), "amed_ipndm_uneven"]
    cells = {c.solver: c for c in plan_cells(network, sha, ["amed_ipndm", "amed_ipndm_uneven"], [5], found)}
    assert cells["amed_ipndm"].cfg is None and cells["amed_ipndm"].note == (
        f"no amed_ipndm predictor for NFE 5 ({tmp_path / 'amed_ipndm5.pt'} was distilled for amed_ipndm_uneven "
        "(AMED-Plugin (iPNDM), uneven-grid weights), not amed_ipndm: the formulas differ)"
    )
    assert cells["amed_ipndm_uneven"].cfg.solver == "amed_ipndm_uneven" and cells["amed_ipndm_uneven"].note is None
    # a mapping that pairs a file with another solver is refused cell by cell, not run
    wrong = plan_cells(network, sha, ["amed_ipndm"], [5], {("amed_ipndm", 5): pred_path})
    assert wrong[0].cfg is None and "distilled for amed, not amed_ipndm: the formulas differ" in wrong[0].note
    # two files for one solver and NFE: which one is measured must not depend on the template order
    (tmp_path / "amed_ipndm_uneven5.pt").write_bytes((tmp_path / "amed_ipndm5.pt").read_bytes())
    with pytest.raises(AmedError, match="two predictor files for amed_ipndm_uneven NFE 5"):
        find_predictors(predictor_templates(), [5], tmp_path)


def test_eval_defaults_come_from_the_registry(tiny_ckpt, predictor_file, tmp_path):
    pred_path, _ = predictor_file
    out = tmp_path / "r.json"
    args = ["eval", "--ckpt", str(tiny_ckpt), "--no-fid", "--rmse-num", "0", "--nfe", "5", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--predictor-dir", str(pred_path.parent), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    solvers = [c["solver"] for c in json.loads(out.read_text())["cells"]]
    assert solvers == [*solver_names(uses_predictor=False), "amed"]
    assert predictor_templates()[:2] == ["amed{nfe}.pt", "amed_euler{nfe}.pt"]
    assert "amed_ipndm_uneven{nfe}.pt" in predictor_templates()


def test_eval_measures_an_epd_table_and_counts_its_parallel_evaluations(tiny_ckpt, epd_predictor, tmp_path):
    """An EPD-Solver cell runs with its predictor file's table; its record counts every network evaluation
    (NFE 5 on 4 points with AFS: 1 + 2 parallel points per interval, less the first slope = 3*3 - 1 = 8)."""
    out = tmp_path / "r.json"
    args = ["eval", "--ckpt", str(tiny_ckpt), "--no-fid", "--rmse-num", "2", "--reference-points", "8"]
    args += ["--solvers", "euler,epd", "--nfe", "5", "--predictor-dir", str(epd_predictor.parent), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    cells = {c["solver"]: c for c in json.loads(out.read_text())["cells"]}
    assert cells["epd"]["predictor"] == str(epd_predictor) and cells["epd"]["num_points"] == 4
    assert cells["epd"]["evaluations"] == 8 and cells["euler"]["evaluations"] == 5
    assert cells["epd"]["rmse"] > 0 and cells["epd"]["rmse"] != cells["euler"]["rmse"]


def test_evaluate_cells_with_stand_in_inception(network, tmp_path):
    inception = Inception(torch.jit.script(MeanFeatures()), sha256="f" * 64, feature_dim=16)
    from amed_deploy.fid import feature_stats, inception_features

    ref_images = torch.randint(0, 256, (40, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    stats = feature_stats(inception_features(ref_images, inception, 20))
    cells = [
        Cell("euler", 3, baseline_sampler(network.net, "euler", 3), network),
        Cell("ipndm", 3, baseline_sampler(network.net, "ipndm", 3), network),
        Cell("amed", 3, note="no amed predictor for NFE 3"),
    ]
    out = tmp_path / "results.json"
    logs = []
    kw = dict(inception=inception, rmse_num=4, reference=ReferenceCache("heun", 20), out=out, progress=False)
    res = evaluate_cells(network, cells, 8, 4, 0, "cpu", stats, log=logs.append, **kw)
    on_disk = json.loads(out.read_text())
    assert on_disk["cells"] == res["cells"] and len(res["cells"]) == 3
    euler = res["cells"][0]
    assert euler["fid"] > 0 and euler["rmse"] > 0 and euler["num"] == 8 and euler["schedule"] == "polynomial"
    assert res["cells"][2]["fid"] is None and res["cells"][2]["note"]
    assert res["reference"]["nfe"] == 35 and res["reference"]["num_points"] == 18  # + a final step to 0
    assert res["reference_fid"] == res["reference"]["fid"] > 0
    assert res["device_name"] == "cpu" and res["seconds"] > 0
    # the fast Frechet distance gives the same FID
    fast = fid_of(network, cells[0].cfg, 8, stats, inception, 4, 0, "cpu", "tf", fd_method="eigh")
    assert fast == pytest.approx(euler["fid"], rel=1e-6)
    # resume: measured cells are kept, nothing is recomputed
    logs.clear()
    again = evaluate_cells(network, cells, 8, 4, 0, "cpu", stats, log=logs.append, resume=True, **kw)
    assert again["cells"][:2] == res["cells"][:2] and again["reference_fid"] == res["reference_fid"]
    assert not any("FID" in line for line in logs)
    # other settings: measured again
    logs.clear()
    evaluate_cells(network, cells[:1], 4, 4, 0, "cpu", stats, log=logs.append, resume=True, **kw)
    assert any("euler NFE 3: FID" in line for line in logs)


FAKE_RESULTS = {
    "device_name": "NVIDIA H100 80GB HBM3",
    "settings": {"num": 10000},
    "rmse_reference": {"method": "heun", "points": 256, "num": 256},
    "cells": [
        {"solver": s, "nfe": n, "fid": f, "rmse": r, "afs": afs, "evaluations": e, "num": 10000, "note": note}
        for s, n, f, r, afs, e, note in [
            ("euler", 3, 93.36, 0.31, False, 3, None),
            ("euler", 5, 49.66, 0.2, False, 5, None),
            ("heun", 3, 306.2, 0.9, True, 3, None),
            ("heun", 5, 97.67, 0.4, True, 5, None),
            ("amed", 3, 18.49, 0.1, True, 3, None),
            ("amed", 5, None, None, None, None, "no amed predictor for NFE 5"),
            ("epd", 3, 15.0, 0.09, True, 5, None),
        ]
    ],
    "reference": {"solver": "heun", "nfe": 35, "num_points": 18, "fid": 2.1},
    "reference_fid": 2.1,
}


def test_markdown_table():
    md = render_results_markdown(FAKE_RESULTS)
    lines = md.splitlines()
    assert lines[0] == "| solver | NFE 3 | NFE 5 | network evaluations |"
    assert lines[1] == "|---|---|---|---|"
    assert lines[2] == "| Euler (DDIM) | 93.36 / 0.3100 | 49.66 / 0.2000 | 3 / 5 |"
    assert lines[3] == "| EDM Heun | 306.20 / 0.9000 ᵃ | 97.67 / 0.4000 ᵃ | 3 / 5 |"
    assert lines[4] == "| AMED-Solver | 18.49 / 0.1000 | – | 3 / – |"
    assert lines[5] == "| EPD-Solver | 15.00 / 0.0900 | – | 5 / – |"
    assert "FID 2.10" in md and "NVIDIA H100" in md and "AFS" in md
    assert "AMED-Solver NFE 5: no amed predictor for NFE 5" in md
    # an RMSE-only run shows RMSE only
    rmse_only = {**FAKE_RESULTS, "cells": [{**c, "fid": None} for c in FAKE_RESULTS["cells"]], "reference": None}
    md = render_results_markdown(rmse_only)
    assert "| Euler (DDIM) | 0.3100 | 0.2000 | 3 / 5 |" in md and "FID" not in md


def test_plots_write_png(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need matplotlib: pip install 'amed-deploy[eval]'")
    path = tmp_path / "fid.png"
    plot_fid_vs_nfe(FAKE_RESULTS, path)
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width >= 600 and img.height >= 400
        assert len(img.convert("RGB").getcolors(1 << 20)) > 5  # lines, text and legend were drawn
    pca = {"n_traj": 4, "n_points": 64, "mean_ratio": [0.9, 0.07, 0.02, 0.01]}
    plot_pca({"raw": pca, "scaled": pca}, tmp_path / "pca.png")
    with Image.open(tmp_path / "pca.png") as img:
        assert img.format == "PNG"
    # degenerate input (one point, no valid values) still gives a PNG
    line_chart({"a": ([1], [None]), "b": ([2], [3.0])}, tmp_path / "x.png", "t", "x", "y", True)
    assert (tmp_path / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_without_matplotlib_say_how_to_install_it(tmp_path, tiny_ckpt, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # absent, even where it is installed
    with pytest.raises(AmedError, match=r"matplotlib.*pip install 'amed-deploy\[eval\]'"):
        plot_fid_vs_nfe(FAKE_RESULTS, tmp_path / "fid.png")
    assert not (tmp_path / "fid.png").exists()
    # `eval --plot` refuses before measuring anything
    out = tmp_path / "r.json"
    args = ["eval", "--ckpt", str(tiny_ckpt), "--inception", str(tmp_path / "none.pt"), "--out", str(out)]
    r = CliRunner().invoke(main, [*args, "--plot", str(tmp_path / "fid.png")])
    assert r.exit_code == 2 and "amed-deploy[eval]" in r.output
    assert not out.exists()


def test_eval_command_rmse_only(tiny_ckpt, predictor_file, tmp_path):
    pred_path, _ = predictor_file
    out = tmp_path / "r.json"
    args = [
        "eval", "--ckpt", str(tiny_ckpt), "--no-fid", "--solvers", "euler,heun,amed", "--nfe", "4,5",
        "--predictors", f"{pred_path.parent}/amed{{nfe}}.pt", "--rmse-num", "4", "--batch", "4",
        "--reference-points", "16", "--out", str(out), "--markdown", str(tmp_path / "t.md"), "--device", "cpu",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    by = {(c["solver"], c["nfe"]): c for c in res["cells"]}
    assert by[("amed", 5)]["rmse"] > 0 and by[("amed", 4)]["rmse"] is None
    assert by[("heun", 5)]["afs"] and not by[("heun", 4)]["afs"]
    assert res["reference_fid"] is None and "| AMED-Solver |" in (tmp_path / "t.md").read_text()


def test_eval_command_errors(tiny_ckpt, tmp_path):
    r = CliRunner().invoke(main, ["eval", "--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "r.json")])
    assert r.exit_code == 2 and "--inception" in r.output
    r = CliRunner().invoke(main, ["eval", "--ckpt", str(tiny_ckpt), "--no-fid", "--nfe", "3,x"])
    assert r.exit_code == 2 and "comma-separated" in r.output
    fake = tmp_path / "inception.pt"
    torch.jit.script(MeanFeatures()).save(str(fake))
    r = CliRunner().invoke(main, ["eval", "--ckpt", str(tiny_ckpt), "--inception", str(fake), "--data", str(tmp_path)])
    assert r.exit_code == 2 and "1x32x32" in r.output  # the tiny net makes 16x16 images
