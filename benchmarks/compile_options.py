"""Compiled fp16 path on the CIFAR-10 configuration: per-forward time under cuDNN/Inductor options,
and where the batch-1 loop overhead goes (docs/BENCHMARKS.md, "H200").

    python benchmarks/compile_options.py --batches 1,256 --out compile_options.json

Variants: Inductor's default mode (what `compile=True` does), the same with cudnn.benchmark on,
with Inductor's freezing (weights folded in as constants), with its coordinate-descent tuning of
Triton kernel launch parameters, and mode="max-autotune-no-cudagraphs"
(Triton templates for convolutions and matmuls; it did not finish compiling batch 256 in 9 minutes
on the H200). For each: the network alone (a replayed CUDA graph of one forward, NFE back to back
divided by NFE), the whole-loop graph replay alone, and `Sampler.sample` end to end, which splits
the loop overhead into graph-internal work (solver steps, predictor) and per-call work (noise,
copies, NaN check)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from amed_deploy.bench import bench_sampler, cuda_time_ms, graphed, open_path, prepare_model, random_cifar10

VARIANTS = ("default", "cudnn_benchmark", "freezing", "coordinate_descent", "max_autotune")


def measure(model, batch: int, variant: str, folder: Path, repeats: int) -> dict:
    torch.backends.cudnn.benchmark = variant == "cudnn_benchmark"
    torch._inductor.config.freezing = variant == "freezing"
    torch._inductor.config.coordinate_descent_tuning = variant == "coordinate_descent"
    smp = open_path(model, "torch-fp16-graph", batch, folder)  # compiled below, before first capture
    mode = "max-autotune-no-cudagraphs" if variant == "max_autotune" else None
    smp.executor.module = torch.compile(smp.executor.module, dynamic=False, mode=mode)
    smp.sample(seed=0)  # compiles, then records the whole loop
    net = graphed(smp.executor.run)
    nfe = smp.config.nfe
    back_to_back = cuda_time_ms(lambda: [net() for _ in range(nfe)], repeats)  # the loop's duty cycle
    row = {"batch": batch, "variant": variant, "net_ms": back_to_back / nfe}
    row["loop_replay_ms"] = cuda_time_ms(smp._graph.replay, repeats)
    row["sample_ms"] = cuda_time_ms(lambda: smp.sample(seed=0), repeats)
    row["overhead_in_graph"] = row["loop_replay_ms"] / (nfe * row["net_ms"])
    row["overhead_end_to_end"] = row["sample_ms"] / (nfe * row["net_ms"])
    torch.backends.cudnn.benchmark = False
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,256")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="amed-compile-options-"))
    model = prepare_model("cifar10", *random_cifar10(), bench_sampler(5), folder)
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    for batch in (int(b) for b in args.batches.split(",")):
        for variant in args.variants.split(","):
            row = measure(model, batch, variant, folder, args.repeats)
            print(json.dumps(row), flush=True)
            results["rows"].append(row)
            args.out.write_text(json.dumps(results, indent=1))
            torch._dynamo.reset()


if __name__ == "__main__":
    main()
