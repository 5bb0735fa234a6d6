"""GPU report for the deploy pipeline (needs a CUDA GPU): every executor and precision compared
with the fp32 PyTorch reference on the same noise, and a first end-to-end latency table.

    python benchmarks/gpu_parity_latency.py --out docs/gpu_report.md

Uses the released CIFAR-10 DDPM++ configuration (edm-cifar10-32x32-cond-vp kwargs) with random
weights and an untrained predictor: speed and parity do not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from amed_deploy.amed_network import AMEDNetwork
from amed_deploy.bench import bench_sampler, random_cifar10, wall_time_ms
from amed_deploy.checkpoint.format import Checkpoint, model_sha256, save_checkpoint
from amed_deploy.files import file_sha256
from amed_deploy.predictor import AMEDPredictor
from amed_deploy.predictor_file import PredictorBundle, save_predictor
from amed_deploy.runtime import Sampler
from exporters.onnx_export import export_onnx


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu_report.md")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    work = Path(tempfile.mkdtemp())
    gpu = torch.cuda.get_device_name()
    net, kwargs = random_cifar10()
    ckpt = work / "edm.pt"
    checkpoint = Checkpoint("EDMPrecond", kwargs, net.state_dict(), {})
    save_checkpoint(checkpoint, ckpt)
    torch.manual_seed(0)
    sampler = bench_sampler(5)
    network = AMEDNetwork(net, AMEDPredictor())
    pred = work / "amed5.pt"
    save_predictor(
        pred,
        PredictorBundle(
            network.predictor, sampler, network.tap, file_sha256(ckpt), model_sha256=model_sha256(checkpoint)
        ),
    )
    batches = [int(b) for b in args.batches.split(",")]
    graphs = {}
    for precision in ("fp32", "fp16"):
        graphs[precision] = work / f"amed5_{precision}.onnx"
        res = export_onnx(
            network, graphs[precision], sampler=sampler, precision=precision, batch=4, batch_range=(1, max(batches))
        )
        print(f"export {precision}: parity vs PyTorch on CPU {res.errors}", flush=True)

    ref = Sampler.load(ckpt, predictor=pred, batch=4, device="cpu").sample(seed=0).images
    configs = [
        ("PyTorch eager", dict(path=ckpt, predictor=pred, precision="fp32")),
        ("PyTorch fp16", dict(path=ckpt, predictor=pred, precision="fp16")),
        ("PyTorch fp16 + CUDA graph", dict(path=ckpt, predictor=pred, precision="fp16", cuda_graph=True)),
        ("ORT CUDA fp32", dict(path=graphs["fp32"])),
        ("ORT CUDA fp16", dict(path=graphs["fp16"])),
        ("ORT CUDA fp16 + ORT CUDA graph", dict(path=graphs["fp16"], cuda_graph=True)),
    ]
    rows, errors = [], {}
    for name, kw in configs:
        path = kw.pop("path")
        try:
            smp = Sampler.load(path, batch=4, device="cuda", **kw)
            got = smp.sample(seed=0).images.cpu()
            errors[name] = {
                "max_abs": (got - ref).abs().max().item(),
                "rmse": (got - ref).square().mean().sqrt().item(),
            }
            row = {"path": name}
            for b in batches:
                smp = Sampler.load(path, batch=b, device="cuda", **kw)
                row[b] = wall_time_ms(lambda smp=smp: smp.sample(seed=0), args.repeats)
            rows.append(row)
        except Exception as e:  # report and continue: one missing provider must not hide the rest
            errors[name] = {"error": f"{type(e).__name__}: {e}"}
        print(name, errors[name], rows[-1] if rows and rows[-1]["path"] == name else "", flush=True)

    base = next((r for r in rows if r["path"] == "PyTorch eager"), None)
    lines = [
        f"GPU: {gpu}; torch {torch.__version__}; CIFAR-10 DDPM++ config (55.7M params, random weights), "
        f"AMED-Solver NFE 5 (AFS, N=4); reference: fp32 PyTorch on the CPU, batch 4, seed 0; TF32 off.",
        "",
        "| executor | max abs err | RMSE |",
        "|---|---|---|",
    ]
    for name, e in errors.items():
        lines.append(
            f"| {name} | " + (f"{e['max_abs']:.2e} | {e['rmse']:.2e} |" if "max_abs" in e else f"{e['error']} | |")
        )
    lines += [
        "",
        "End-to-end `Sampler.sample` latency (median ms, includes seeded noise on the CPU, copies and "
        "the NaN check; speedup vs PyTorch eager in the same run):",
        "",
        "| executor | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "|---|" + "---|" * len(batches),
    ]
    for r in rows:
        cells = [f"{r[b]:.1f}" + (f" ({base[b] / r[b]:.2f}x)" if base else "") for b in batches]
        lines.append(f"| {r['path']} | " + " | ".join(cells) + " |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(
        json.dumps({"gpu": gpu, "errors": errors, "latency_ms": rows}, indent=1)
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
