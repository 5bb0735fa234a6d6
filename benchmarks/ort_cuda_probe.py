"""Where the ORT-CUDA graph's time goes: the graph as `amed-deploy bench` exports it (dynamic batch)
and fixed-batch exports (so ORT can record its CUDA graph), timed through the Sampler; GPU kernel
time per forward by op, from CUPTI (torch's profiler sees ONNX Runtime's kernels too) in steady state;
and one GroupNorm+SiLU layer as ORT's fused contrib op against the standard ONNX GroupNormalization.

Run on a GPU with onnxruntime-gpu: python benchmarks/ort_cuda_probe.py [--batches 1,256]"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from amed_deploy.bench import bench_sampler, random_cifar10, wall_time_ms
from amed_deploy.runtime import Sampler
from exporters.onnx_export import export_onnx


def kernels_ms(fn: Callable[[], object], runs: int = 3, top: int = 12) -> dict:
    """GPU kernel time per call of fn, by kernel name (after warm-up), from torch's CUPTI profiler."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn()
        torch.cuda.synchronize()
    per: collections.Counter = collections.Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per[e.name[:90]] += e.device_time / 1000 / runs
    return {"total_ms": sum(per.values()), "kernels": len(per), "top_ms": dict(per.most_common(top))}


def group_norm_layer(kind: str, shape: tuple[int, int, int, int], groups: int) -> onnx.ModelProto:
    """GroupNorm+SiLU over fp16 x: ORT's fused contrib op (NHWC) or ONNX GroupNormalization-21 + SiLU."""
    n, c, h, w = shape
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [c], np.ones(c, np.float32))
    bias = helper.make_tensor("bias", TensorProto.FLOAT, [c], np.zeros(c, np.float32))
    if kind == "contrib":
        nodes = [
            helper.make_node(
                "GroupNorm", ["x", "scale", "bias"], ["y"], domain="com.microsoft",
                activation=1, channels_last=1, epsilon=1e-5, groups=groups,
            )
        ]  # fmt: skip
        io = [n, h, w, c]
        opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    else:
        nodes = [
            helper.make_node("GroupNormalization", ["x", "scale16", "bias16"], ["g"], num_groups=groups, epsilon=1e-5),
            helper.make_node("Sigmoid", ["g"], ["s"]),
            helper.make_node("Mul", ["g", "s"], ["y"]),
            helper.make_node("Cast", ["scale"], ["scale16"], to=TensorProto.FLOAT16),
            helper.make_node("Cast", ["bias"], ["bias16"], to=TensorProto.FLOAT16),
        ]
        nodes = nodes[3:] + nodes[:3]
        io = [n, c, h, w]
        opsets = [helper.make_opsetid("", 21)]
    graph = helper.make_graph(
        nodes,
        kind,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, io)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, io)],
        [scale, bias],
    )
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def group_norm_probe(shape: tuple[int, int, int, int] = (256, 256, 16, 16), groups: int = 32) -> dict:
    import onnxruntime as ort

    x = torch.randn(shape, device="cuda", dtype=torch.float16)
    want = torch.nn.functional.silu(torch.nn.functional.group_norm(x.float(), groups, eps=1e-5))
    out: dict = {"shape": list(shape)}
    for kind in ("contrib", "standard"):
        try:
            sess = ort.InferenceSession(
                group_norm_layer(kind, shape, groups).SerializeToString(),
                providers=[("CUDAExecutionProvider", {"prefer_nhwc": "1"})],
            )
            inp = x.permute(0, 2, 3, 1).contiguous() if kind == "contrib" else x
            y = torch.empty_like(inp)
            binding = sess.io_binding()
            binding.bind_input("x", "cuda", 0, np.float16, list(inp.shape), inp.data_ptr())
            binding.bind_output("y", "cuda", 0, np.float16, list(y.shape), y.data_ptr())
            sess.run_with_iobinding(binding)
            torch.cuda.synchronize()
            got = y.permute(0, 3, 1, 2) if kind == "contrib" else y
            out[kind] = {
                "max_abs_error_vs_fp32": float((got.float() - want).abs().max()),
                **kernels_ms(lambda s=sess, b=binding: s.run_with_iobinding(b), top=4),
            }
        except Exception as e:  # a finding, not a crash
            out[kind] = f"{type(e).__name__}: {str(e)[:300]}"
    return out


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
    report: dict = {"gpu": torch.cuda.get_device_name(), "group_norm": group_norm_probe(), "cells": []}
    print(json.dumps(report["group_norm"]), flush=True)
    dynamic = work / "ort-dynamic.onnx"
    export_onnx(network, dynamic, sampler=sampler, precision="fp16", batch=16, batch_range=(1, 256),
                target="ort-cuda", check=False)  # fmt: skip
    for batch in (int(b) for b in args.batches.split(",")):
        fixed = work / f"ort-{batch}.onnx"
        export_onnx(network, fixed, sampler=sampler, precision="fp16", batch=batch, target="ort-cuda", check=False)
        cell: dict = {"batch": batch}
        for graph, cuda_graph in ((dynamic, False), (fixed, False), (fixed, True)):
            key = f"{'dynamic' if graph == dynamic else 'fixed'}_cuda_graph_{cuda_graph}"
            try:
                smp = Sampler.load(graph, batch=batch, device="cuda", cuda_graph=cuda_graph)
                cell[f"e2e_ms_{key}"] = wall_time_ms(lambda smp=smp: smp.sample(seed=0), 10, warmup=2)
                if not cuda_graph:
                    cell[f"net_kernels_{key}"] = kernels_ms(smp.executor.run)
                    cell[f"net_wall_ms_{key}"] = wall_time_ms(smp.executor.run, 20)
            except Exception as e:  # a finding, not a crash
                cell[f"e2e_ms_{key}"] = f"{type(e).__name__}: {str(e)[:600]}"
        report["cells"].append(cell)
        print(json.dumps(cell), flush=True)
        args.out.write_text(json.dumps(report, indent=1))
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
