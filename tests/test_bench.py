"""The benchmark's bookkeeping on the CPU (the measurements themselves need a CUDA GPU)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_net

from amed_deploy.amed_network import AMEDNetwork
from amed_deploy.bench import (
    Row,
    baseline_e2e,
    bench_sampler,
    cycling_network,
    done_cells,
    flops_per_image,
    loop_calls,
    render_markdown,
    rows_from_json,
    rows_to_json,
)
from amed_deploy.cli import main
from amed_deploy.errors import AmedError
from amed_deploy.predictor import AMEDPredictor


def test_the_timed_network_calls_are_the_loops_own():
    """NFE 5 with AFS on 4 points: the AMED-Solver makes 5 calls of B; the EPD-Solver skips the first slope
    (AFS) and then per interval calls B for d_n and 2B for its two points: 2B, B, 2B, B, 2B."""
    from amed_deploy.epd_table import EPDTable

    net = tiny_net()
    assert loop_calls(AMEDNetwork(net, AMEDPredictor()), bench_sampler(5, "amed")) == [1, 1, 1, 1, 1]
    assert loop_calls(AMEDNetwork(net, EPDTable(3)), bench_sampler(5, "epd")) == [2, 1, 2, 1, 2]
    made, ran = [], []
    call = cycling_network(lambda n: made.append(n) or (lambda: ran.append(n)), [2, 1, 2, 1, 2], batch=4)
    for _ in range(7):
        call()
    assert sorted(made) == [4, 8] and ran == [8, 4, 8, 4, 8, 8, 4]  # one callable per size, the loop's order


def test_flop_count_scales_with_width():
    """Conv FLOPs grow ~4x when every channel count doubles: the counter sees the whole U-Net."""
    from conftest import TINY_KWARGS

    from amed_deploy.networks import build_network

    small = flops_per_image(AMEDNetwork(tiny_net(), AMEDPredictor()))
    wide = build_network("EDMPrecond", {**TINY_KWARGS, "model_channels": 32})
    big = flops_per_image(AMEDNetwork(wide, AMEDPredictor()))
    assert small > 1e6 and 3.0 < big / small < 4.5


def test_markdown_table_and_missing_paths():
    rows = [
        Row("cifar10", 5, 16, "eager-fp32", 10.0, 60.0, 266.7, 1.0, 1.2, 0.1, 900.0),
        Row("cifar10", 5, 16, "trt-fp16", note="AmedError: TensorRT is not installed"),
    ]
    text = render_markdown(
        rows, {"gpu": "TestGPU", "torch": "x", "fp16_matmul_tflops": 700.0, "gflops_per_image": {"cifar10": 42.4}}
    )
    assert "TestGPU" in text
    assert "| cifar10 | 5 | 16 | eager-fp32 | 10.00 | 60.00 | 267 | 1.00 |  | 1.20 | 10.0% |" in text
    assert "TensorRT is not installed" in text


def test_resume_bookkeeping_round_trips_and_keeps_the_baseline():
    import json

    facts = {"gpu": "TestGPU", "torch": "x", "fp16_matmul_tflops": 700.0, "complete": False}
    rows = [
        Row("cifar10", 5, 256, "torch-fp16-graph", 30.0, 160.0, speedup=3.0),
        Row("cifar10", 5, 256, "eager-fp32", 96.0, 480.0, speedup=1.0),
        Row("cifar10", 5, 1, "trt-fp16", note="AmedError: TensorRT is not installed"),
    ]
    again, facts2 = rows_from_json(json.loads(json.dumps(rows_to_json(rows, facts))))
    assert again == rows and facts2 == facts
    assert done_cells(again) == {
        ("cifar10", 5, 256, "torch-fp16-graph"),
        ("cifar10", 5, 256, "eager-fp32"),
        ("cifar10", 5, 1, "trt-fp16"),
    }
    assert baseline_e2e(again, "cifar10", 5, 256) == 480.0 and baseline_e2e(again, "cifar10", 5, 1) is None
    lines = render_markdown(again, facts2).splitlines()
    body = [ln for ln in lines if ln.startswith("| cifar10")]
    assert [ln.split(" | ")[3] for ln in body] == ["trt-fp16", "eager-fp32", "torch-fp16-graph"]  # batch, path order
    with pytest.raises(AmedError, match="not a bench results file"):
        rows_from_json({"rows": [{"nope": 1}], "facts": {}})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without CUDA")
def test_bench_refuses_without_cuda(tmp_path):
    res = CliRunner().invoke(main, ["bench", "--out", str(tmp_path / "b.md")])
    assert res.exit_code == 2 and "needs a CUDA GPU" in res.output and not (tmp_path / "b.md").exists()


def test_bench_refuses_unknown_solvers_and_paths_before_anything_else(tmp_path):
    out = tmp_path / "b.md"
    res = CliRunner().invoke(main, ["bench", "--solvers", "amed,ddim", "--out", str(out)])
    assert res.exit_code == 2 and "unknown bench solver(s) ['ddim']; choose from amed, epd, epd_ipndm" in res.output
    res = CliRunner().invoke(main, ["bench", "--paths", "eager-fp32,fast", "--out", str(out)])
    assert res.exit_code == 2 and "unknown bench path(s) ['fast']" in res.output and not out.exists()
    res = CliRunner().invoke(main, ["bench", "--networks", "bundled,bundled:nope", "--out", str(out)])
    assert res.exit_code == 2 and not out.exists()
    assert (
        "unknown bench network 'bundled:nope': bundled, bundled:fashion-mnist, bundled:cifar10, cifar10" in res.output
    )


def test_bench_networks_name_every_bundled_model(monkeypatch, tiny_ckpt):
    """`bundled` is the default model, `bundled:NAME` any bundled one (rows bundled-NAME), each built from its
    own checkpoint."""
    from amed_deploy import assets
    from amed_deploy.bench import bench_network_names, bench_networks

    tiny = assets.DemoModel("tiny", tiny_ckpt, ("a", "b", "c"))
    monkeypatch.setitem(assets.DEMO_MODELS, "tiny", tiny)
    assert bench_network_names("bundled,bundled:tiny,cifar10") == [
        ("bundled", assets.DEFAULT_MODEL),
        ("bundled-tiny", tiny),
        ("cifar10", None),
    ]
    [(row, net, kwargs)] = bench_networks(bench_network_names("bundled:tiny"))
    assert row == "bundled-tiny" and net.label_dim == 3 and kwargs["img_resolution"] == 16


def test_every_row_reports_its_speedup_over_the_user_recipe():
    """speedup_user = user-compile's end-to-end time / the row's, per cell, whichever order they came in."""
    from amed_deploy.bench import with_user_speedups

    rows = with_user_speedups(
        [
            Row("cifar10", 5, 1, "torch-fp16-compile-graph", 1.0, 5.0),
            Row("cifar10", 5, 1, "user-compile", 2.0, 8.0),
            Row("cifar10", 5, 256, "torch-fp16-compile-graph", 30.0, 150.0),
        ]
    )
    assert [r.speedup_user for r in rows] == [1.6, 1.0, None]
    text = render_markdown(rows, {"gpu": "G", "torch": "x", "fp16_matmul_tflops": 700.0})
    assert "| torch-fp16-compile-graph | 1.00 | 5.00 |" in text and "| 1.60 |" in text
