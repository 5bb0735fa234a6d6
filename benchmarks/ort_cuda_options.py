"""Which ONNX Runtime CUDA-provider options make the exported CIFAR-10 graph faster (one forward).

The bench found ORT's CUDA provider 3-6x slower than PyTorch on this graph; this measures, in one
run, the documented knobs that could explain it: NHWC convolutions (prefer_nhwc), cuDNN's algorithm
search, and (fp32 only) TF32, which our sessions switch off for parity.

python benchmarks/ort_cuda_options.py --out results/ort_options.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from amed_deploy.bench import bench_sampler, cuda_time_ms, open_path, prepare_model, random_cifar10
from amed_deploy.runtime.onnx_executor import OnnxExecutor

VARIANTS = {
    "default": {},
    "prefer_nhwc": {"prefer_nhwc": "1"},
    "heuristic_search": {"cudnn_conv_algo_search": "HEURISTIC"},
    "nhwc_heuristic": {"prefer_nhwc": "1", "cudnn_conv_algo_search": "HEURISTIC"},
    "tf32": {"use_tf32": "1"},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,256")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="amed-ort-options-"))
    model = prepare_model("cifar10", *random_cifar10(), bench_sampler(5), folder)
    results = {"gpu": torch.cuda.get_device_name(), "rows": []}
    for precision in ("fp16", "fp32"):
        open_path(model, f"ort-{precision}", 1, folder)  # exports the graph once
        graph = model.graphs[precision]
        for batch in (int(b) for b in args.batches.split(",")):
            for name, options in VARIANTS.items():
                if name == "tf32" and precision == "fp16":
                    continue
                ex = OnnxExecutor.open(graph, batch, "cuda", provider_options=options)
                ms = cuda_time_ms(ex.run, args.repeats)
                row = {"precision": precision, "batch": batch, "variant": name, "forward_ms": ms}
                results["rows"].append(row)
                print(row, flush=True)
                ex.close()
                torch.cuda.empty_cache()
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
