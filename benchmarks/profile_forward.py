"""Where one network forward spends its GPU time (torch profiler; no nsys needed), for a bench path.

python benchmarks/profile_forward.py --network cifar10 --path torch-fp16 --batch 256 --out results/profile.txt
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from amed_deploy.bench import bench_sampler, open_path, prepare_model, random_cifar10


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", default="torch-fp16")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="amed-profile-"))
    model = prepare_model("cifar10", *random_cifar10(), bench_sampler(5), folder)
    run = open_path(model, args.path, args.batch, folder).executor.run
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.runs):
            run()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=90)
    text = f"{torch.cuda.get_device_name()} {args.path} batch {args.batch}, {args.runs} forwards\n{table}\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
