"""Distillation speed on a CUDA GPU: time per training batch of a student's recipe, with the teacher solved per
batch (`old`), per TEACHER_BATCH samples (`new`, the default) and with the frozen U-Net compiled (`compile`).

python benchmarks/distill_speed.py --student epd --ckpt amed_deploy/assets/fashion_mnist_edm.safetensors
python benchmarks/distill_speed.py --student amed            # the CIFAR-10 configuration, random weights
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from amed_deploy.bench import random_cifar10
from amed_deploy.distill import TEACHER_BATCH, DistillConfig, compiled_unet, distill
from amed_deploy.sampling import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--student", default="amed")
    ap.add_argument("--ckpt", default=None, help="checkpoint [default: the CIFAR-10 configuration, random weights]")
    ap.add_argument("--nfe", type=int, default=5)
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--modes", default="old,new,compile")
    ap.add_argument("--inception", default=None, help="FID network file: EPD's feature loss on the last interval")
    args = ap.parse_args()
    net = (load_model(args.ckpt).network.net if args.ckpt else random_cifar10()[0]).cuda()
    inception = None
    if args.inception:
        from amed_deploy.fid import load_inception

        inception = load_inception(args.inception, "cuda")
    for mode in args.modes.split(","):
        recipe = DistillConfig.for_student(args.student, nfe=args.nfe)
        cfg = dataclasses.replace(recipe, kimg=recipe.batch * args.batches / 1000)
        teacher_batch = cfg.batch if mode == "old" else TEACHER_BATCH
        run = dict(progress=False, inception=inception, teacher_batch=teacher_batch)
        with compiled_unet(net, mode == "compile"):
            distill(net, cfg, "cuda", **run)  # warm-up: autotuning, compilation
            torch.cuda.synchronize()
            start = time.perf_counter()
            _, _, losses = distill(net, cfg, "cuda", **run)
            torch.cuda.synchronize()
        per_batch = (time.perf_counter() - start) / len(losses)
        print(
            f"{torch.cuda.get_device_name()} {args.student} NFE {args.nfe} {mode} (batch {cfg.batch}, teacher "
            f"{cfg.teacher} M={cfg.teacher_m}, feature loss {'on' if inception else 'off'}): {per_batch * 1e3:.0f} ms "
            f"per batch -> {per_batch * 10000 / cfg.batch / 60:.1f} min for 10 kimg",
            flush=True,
        )


if __name__ == "__main__":
    main()
