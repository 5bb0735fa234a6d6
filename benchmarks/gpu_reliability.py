"""Reliability on a CUDA GPU: a long soak of one Sampler, faults injected into a running Sampler,
and CUDA-side concurrency, on the bundled model (NFE 5). Figures go to docs/RELIABILITY.md.

    pip install onnxruntime-gpu           # optional: adds the `ort` path
    python benchmarks/gpu_reliability.py --calls 2000 --out results/reliability.json

Paths: `torch` (PyTorch fp16, whole loop as one CUDA graph) and `ort` (ONNX Runtime CUDA provider,
fp16 graph) when onnxruntime-gpu is importable. The sticky-fault check runs in a child process,
because a device-side assert leaves CUDA unusable for the rest of that process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from amed_deploy import assets
from amed_deploy.runtime import Sampler

BATCH = 16


def opener(kind: str, folder: Path) -> Callable[[], Sampler]:
    """A factory of fresh Samplers for one path (the ONNX graph is exported once)."""
    if kind == "torch":
        return lambda: Sampler.load(
            assets.MODEL, predictor=assets.PREDICTORS[5], batch=BATCH, device="cuda", precision="fp16", cuda_graph=True
        )
    from amed_deploy.sampling import load_model
    from exporters.onnx_export import export_onnx

    loaded = load_model(assets.MODEL, assets.PREDICTORS[5])
    graph = folder / "bundled-amed5-fp16.onnx"
    export_onnx(loaded.network, graph, sampler=loaded.bundle.sampler, precision="fp16", batch=BATCH)
    return lambda: Sampler.load(graph, batch=BATCH, device="cuda")


def memory() -> dict:
    free, total = torch.cuda.mem_get_info()
    rss_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))
    return {
        "torch_allocated_mib": torch.cuda.memory_allocated() / 2**20,
        "torch_reserved_mib": torch.cuda.memory_reserved() / 2**20,
        "device_used_mib": (total - free) / 2**20,  # includes ONNX Runtime's own arena
        "host_rss_mib": rss_kib / 1024,
    }


def soak(make: Callable[[], Sampler], calls: int) -> dict:
    smp = make()
    first = smp.sample(seed=0).images.cpu()
    for seed in range(10):
        smp.sample(seed=seed)
    torch.cuda.synchronize()
    before = memory()
    times, errors = [], []
    for i in range(calls):
        start = time.perf_counter()
        try:
            smp.sample(seed=i % 997, classes=i % 10)
            torch.cuda.synchronize()
        except Exception as e:  # counted, not fatal: the soak reports them
            errors.append(f"{type(e).__name__}: {e}"[:200])
        times.append((time.perf_counter() - start) * 1000)
    after = memory()
    window = max(1, min(200, calls // 5))
    head, tail = statistics.median(times[:window]), statistics.median(times[-window:])
    return {
        "calls": calls,
        "errors": len(errors),
        "first_errors": errors[:3],
        "memory_before": before,
        "memory_after": after,
        "latency_ms_median": statistics.median(times),
        "latency_ms_p99": sorted(times)[int(0.99 * (len(times) - 1))],
        "latency_ms_first_window": head,
        "latency_ms_last_window": tail,
        "drift": tail / head - 1,
        "same_result_after_soak": bool(torch.equal(smp.sample(seed=0).images.cpu(), first)),
    }


def concurrency(make: Callable[[], Sampler]) -> dict:
    """One Sampler shared by 8 threads, and 8 Samplers in 8 threads, against single-threaded runs."""
    single = make()
    want = {seed: single.sample(seed=seed).images.cpu() for seed in range(8)}
    report = {}
    for mode in ("one_sampler_8_threads", "8_samplers_8_threads"):
        samplers = [single] * 8 if mode.startswith("one") else [make() for _ in range(8)]
        got: dict[int, torch.Tensor] = {}
        failures: list[str] = []

        def work(i: int, samplers=samplers, got=got, failures=failures) -> None:
            try:
                for _ in range(5):
                    got[i] = samplers[i].sample(seed=i).images.cpu()
            except Exception as e:
                failures.append(f"{type(e).__name__}: {e}"[:200])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        report[mode] = {
            "failures": failures,
            "identical": all(i in got and torch.equal(got[i], want[i]) for i in range(8)),
            "max_abs_diff": max((got[i] - want[i]).abs().max().item() for i in got) if got else None,
        }
    return report


def inject_once(smp: Sampler, fault: Callable[[], None]) -> None:
    real = smp.executor.run
    armed = [True]

    def run() -> None:
        if armed[0]:
            armed[0] = False
            fault()
        real()

    smp.executor.run = run


def _raise_exception() -> None:
    raise ValueError("injected backend exception")


def _exhaust_memory() -> None:
    torch.empty(1 << 46, dtype=torch.uint8, device="cuda")  # 64 TiB: a real CUDA out-of-memory error


def faults(make: Callable[[], Sampler]) -> dict:
    """Recoverable faults in this process: an executor exception and a real out-of-memory error."""
    report = {}
    for name, fault in (("executor_exception", _raise_exception), ("cuda_out_of_memory", _exhaust_memory)):
        smp = make()  # fresh: for a graphed Sampler the fault hits the first call, i.e. mid-capture
        want = make().sample(seed=4).images.cpu()
        inject_once(smp, fault)
        try:
            smp.sample(seed=4)
            raised = "nothing"
        except Exception as e:
            raised = f"{type(e).__name__}: {e}"[:240]
        after = smp.sample(seed=4).images.cpu()
        report[name] = {"raised": raised, "next_call_correct": bool(torch.equal(after, want))}
    return report


STICKY = """
import json, torch
from amed_deploy import assets
from amed_deploy.runtime import Sampler
smp = Sampler.load(assets.MODEL, predictor=assets.PREDICTORS[5], batch=4, device="cuda", precision="fp16")
ok = bool(torch.isfinite(smp.sample(seed=1).images).all())
real = smp.executor.run
def run():
    torch.zeros(4, device="cuda")[torch.tensor([10**6], device="cuda")] += 1  # device-side assert
    torch.cuda.synchronize()
    real()
smp.executor.run = run
out = {"worked_before": ok}
for key in ("first_call", "second_call"):
    try:
        smp.sample(seed=1)
        out[key] = "no error"
    except Exception as e:
        out[key] = f"{type(e).__name__}: {e}"[:300]
print("RESULT " + json.dumps(out))
"""
FRESH = """
import torch
from amed_deploy import assets
from amed_deploy.runtime import Sampler
smp = Sampler.load(assets.MODEL, predictor=assets.PREDICTORS[5], batch=4, device="cuda", precision="fp16")
print("RESULT", bool(torch.isfinite(smp.sample(seed=1).images).all()))
"""


def sticky_fault() -> dict:
    """A device-side assert inside a run, in a child process; then a fresh process samples again."""
    child = subprocess.run([sys.executable, "-c", STICKY], capture_output=True, text=True, timeout=300)
    line = next((ln for ln in child.stdout.splitlines() if ln.startswith("RESULT ")), None)
    result = json.loads(line[7:]) if line else {"child_failed": child.stderr[-600:]}
    fresh = subprocess.run([sys.executable, "-c", FRESH], capture_output=True, text=True, timeout=300)
    result["fresh_process_works"] = "RESULT True" in fresh.stdout
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    kinds = ["torch"]
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            kinds.append("ort")
    except ImportError:
        pass
    folder = Path(tempfile.mkdtemp(prefix="amed-rel-"))
    report: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": BATCH, "paths": {}}
    for kind in kinds:
        make = opener(kind, folder)
        entry = {"soak": soak(make, args.calls), "concurrency": concurrency(make), "faults": faults(make)}
        report["paths"][kind] = entry
        print(kind, json.dumps(entry, indent=1), flush=True)
        args.out.write_text(json.dumps(report, indent=1))
    report["sticky_fault"] = sticky_fault()
    print("sticky", json.dumps(report["sticky_fault"], indent=1))
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
