"""Where the ORT-CUDA graph's time goes: fixed-batch exports (so ORT can fold shape nodes and record
its CUDA graph) timed through the Sampler, and ONNX Runtime's profiler on one call, summed per op type.

Run on a GPU with onnxruntime-gpu: python benchmarks/ort_cuda_probe.py [--batches 1,256]"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import torch

from amed_deploy.bench import bench_sampler, random_cifar10, wall_time_ms
from amed_deploy.runtime import Sampler
from exporters.onnx_export import export_onnx


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", default="1,256")
    parser.add_argument("--out", type=Path, default=Path("ort_cuda_probe.json"))
    args = parser.parse_args()
    from amed_deploy.amed_network import AMEDNetwork
    from amed_deploy.predictor import AMEDPredictor

    net, _ = random_cifar10()
    torch.manual_seed(0)
    network = AMEDNetwork(net, AMEDPredictor())
    sampler = bench_sampler(5)
    work = Path(tempfile.mkdtemp())
    report: dict = {"gpu": torch.cuda.get_device_name(), "cells": []}
    for batch in (int(b) for b in args.batches.split(",")):
        graph = work / f"ort-{batch}.onnx"
        export_onnx(network, graph, sampler=sampler, precision="fp16", batch=batch, target="ort-cuda", check=False)
        cell: dict = {"batch": batch}
        for cuda_graph in (False, True):
            try:
                smp = Sampler.load(graph, device="cuda", cuda_graph=cuda_graph)
                cell[f"e2e_ms_cuda_graph_{cuda_graph}"] = wall_time_ms(lambda smp=smp: smp.sample(seed=0), 10, warmup=1)
            except Exception as e:  # a finding, not a crash
                cell[f"e2e_ms_cuda_graph_{cuda_graph}"] = f"{type(e).__name__}: {str(e)[:200]}"
        smp = Sampler.load(graph, device="cuda")
        session = smp.executor.session
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(work / f"prof-{batch}")
        providers = session.get_providers()
        profiled = ort.InferenceSession(
            str(graph), options, providers=[(providers[0], session.get_provider_options()[providers[0]])]
        )
        feeds = {i.name: smp.executor.inputs[i.name].cpu().numpy() for i in profiled.get_inputs()}
        for _ in range(3):
            profiled.run(None, feeds)
        trace = json.loads(Path(profiled.end_profiling()).read_text())
        per_op: collections.Counter = collections.Counter()
        for event in trace:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                per_op[event.get("args", {}).get("op_name", "?")] += event["dur"] / 3 / 1000
        cell["kernel_ms_per_forward_by_op"] = dict(per_op.most_common(12))
        cell["kernel_ms_per_forward"] = sum(per_op.values())
        report["cells"].append(cell)
        print(json.dumps(cell), flush=True)
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
