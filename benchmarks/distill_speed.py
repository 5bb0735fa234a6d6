"""Distillation speed on a CUDA GPU: time per kimg (1000 trajectories) for a real-size network.

python benchmarks/distill_speed.py --kimg 0.512 --out docs/distill_speed.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from amed_deploy.bench import random_cifar10
from amed_deploy.distill import DistillConfig, distill


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kimg", type=float, default=0.512)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--out", default="distill_speed.md")
    args = ap.parse_args()
    net = random_cifar10()[0].cuda()
    warm = DistillConfig(teacher="heun", teacher_m=1, batch=args.batch, kimg=args.batch / 1000)
    distill(net, warm, "cuda", progress=False)  # cuDNN autotuning, allocator warm-up
    cfg = DistillConfig(teacher="heun", teacher_m=1, batch=args.batch, kimg=args.kimg)
    torch.cuda.synchronize()
    start = time.perf_counter()
    _, sampler, losses = distill(net, cfg, "cuda", progress=False)
    torch.cuda.synchronize()
    per_kimg = (time.perf_counter() - start) / (len(losses) * args.batch / 1000)
    gpu = torch.cuda.get_device_name()
    text = (
        f"GPU: {gpu}; torch {torch.__version__}; CIFAR-10 DDPM++ config (random weights), "
        f"AMED-Solver NFE {sampler.nfe} recipe (teacher Heun M=1, {cfg.schedule}), batch {args.batch}, "
        f"fp32 (TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}): "
        f"**{per_kimg:.1f} s per kimg** -> the default 10 kimg takes {10 * per_kimg / 60:.1f} min.\n"
    )
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
