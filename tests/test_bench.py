"""The benchmark's bookkeeping on the CPU (the measurements themselves run on the GPU machine)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_net

from amed_deploy.amed_network import AMEDNetwork
from amed_deploy.bench import Row, flops_per_image, render_markdown
from amed_deploy.cli import main
from amed_deploy.predictor import AMEDPredictor


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
    assert "TestGPU" in text and "| cifar10 | 5 | 16 | eager-fp32 | 10.00 | 60.00 | 267 | 1.00 | 1.20 | 10.0% |" in text
    assert "TensorRT is not installed" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without CUDA")
def test_bench_refuses_without_cuda(tmp_path):
    res = CliRunner().invoke(main, ["bench", "--out", str(tmp_path / "b.md")])
    assert res.exit_code == 2 and "needs a CUDA GPU" in res.output and not (tmp_path / "b.md").exists()
