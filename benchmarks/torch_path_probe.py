"""Where the compiled PyTorch path's time goes, and which compiler settings buy time: the fp16
executor (channels-last, fused kernels) under several torch.compile settings, each timed as one
forward replayed from a CUDA graph (as the Sampler's loop runs it), plus the torch profiler's
kernel time per forward by kind for the default setting.

Run on a GPU: python benchmarks/torch_path_probe.py [--batches 1,256] [--variants ...]"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import torch

from amed_deploy.amed_network import AMEDNetwork, graph_spec
from amed_deploy.bench import bench_sampler, cuda_time_ms, graphed, random_cifar10
from amed_deploy.predictor import AMEDPredictor
from amed_deploy.runtime.torch_executor import TorchExecutor

VARIANTS = {
    "default": {},
    "cudnn-benchmark": {"cudnn_benchmark": True},
    "max-autotune": {"cudnn_benchmark": True, "options": {"max_autotune": True, "coordinate_descent_tuning": True}},
    "freezing": {"cudnn_benchmark": True, "freezing": True},
}


def kind_of(kernel: str) -> str:
    k = kernel.lower()
    if "triton" in k:
        return "triton (fused elementwise / norm)"
    if any(s in k for s in ("conv", "xmma", "implicit", "cudnn", "fprop", "dgrad", "winograd")):
        return "convolution (cuDNN)"
    if any(s in k for s in ("gemm", "cutlass", "matmul", "sm90_", "ampere_", "splitk")):
        return "matmul"
    if "flash" in k or "fmha" in k or "attention" in k:
        return "attention"
    return "other"


def profile(executor: TorchExecutor, runs: int = 3) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for _ in range(3):
        executor.run()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            executor.run()
        torch.cuda.synchronize()
    by_kind: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            by_kind[kind_of(e.name)] += e.device_time / 1000 / runs
            count[kind_of(e.name)] += 1 / runs
    return {
        "kernel_ms_per_forward": sum(by_kind.values()),
        "ms_by_kind": dict(by_kind.most_common()),
        "kernels_per_forward": dict(count.most_common()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", default="1,256")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("torch_path_probe.json"))
    parser.add_argument("--minutes", type=float, default=8.0, help="no new variant starts after this")
    args = parser.parse_args()
    deadline = time.monotonic() + args.minutes * 60
    net, _ = random_cifar10()
    torch.manual_seed(0)
    network = AMEDNetwork(net, AMEDPredictor()).eval()
    report: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cells": []}
    for batch in (int(b) for b in args.batches.split(",")):
        spec = graph_spec(network, bench_sampler(5), "fp16", batch, None, None, None)
        for name in args.variants.split(","):
            if time.monotonic() > deadline:
                break
            variant = VARIANTS[name]
            torch._dynamo.reset()
            torch.backends.cudnn.benchmark = variant.get("cudnn_benchmark", False)
            torch._inductor.config.freezing = variant.get("freezing", False)
            cell: dict = {"batch": batch, "variant": name}
            start = time.monotonic()
            try:
                executor = TorchExecutor.open(network, batch, "cuda", spec=spec)
                options = variant.get("options")
                executor.module = torch.compile(executor.module, dynamic=False, options=options)
                executor.run()
                torch.cuda.synchronize()
                cell["compile_s"] = time.monotonic() - start
                replay = graphed(executor.run)
                cell["net_ms"] = cuda_time_ms(lambda replay=replay: [replay() for _ in range(5)], 20) / 5
                if name == "default":
                    cell["profile"] = profile(executor)
            except Exception as e:  # a finding, not a crash
                cell["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            report["cells"].append(cell)
            print(json.dumps(cell), flush=True)
            args.out.write_text(json.dumps(report, indent=1))
    torch.backends.cudnn.benchmark = False


if __name__ == "__main__":
    main()
