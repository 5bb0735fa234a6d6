"""`amed-deploy bench --serve`: throughput of single-image requests from many client threads, served one
Sampler call per request (a batch-1 Sampler) against a `RequestBatcher` over batch-B Samplers of the
same path, in the same run. Each client sends its requests one after another (a closed loop), so the
number of clients is the number of requests in flight."""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .runtime import RequestBatcher, Sampler


@dataclass
class ServeRow:
    network: str
    nfe: int
    mode: str  # "per-request" or "batched"
    batch: int  # the Sampler's batch (1 for per-request)
    clients: int
    requests: int
    images_per_s: float
    p50_ms: float
    p99_ms: float
    calls: int  # Sampler calls made
    speedup: float = 1.0  # images/s against per-request


def drive(request: Callable[[int], object], seeds: Sequence[int], clients: int) -> tuple[float, list[float]]:
    """`clients` threads, each requesting its share of the seeds one at a time: (seconds, latencies ms)."""
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client(mine: Sequence[int]) -> None:
        for seed in mine:
            start = time.perf_counter()
            try:
                request(seed)
            except BaseException as e:  # reported after the run, not lost in a thread
                errors.append(e)
                return
            with lock:
                latencies.append((time.perf_counter() - start) * 1000)

    threads = [threading.Thread(target=client, args=(seeds[i::clients],)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return seconds, latencies


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def serve_rows(
    network: str,
    nfe: int,
    one: Sampler,
    batched: Sequence[Sampler],
    clients: int,
    requests: int,
    max_wait_ms: float,
    warmup: int = 3,
) -> list[ServeRow]:
    """The same requests (seeds 0..requests-1) served one call each by `one`, then through a RequestBatcher
    over each of `batched`, after `warmup` calls of every Sampler: the per-request row first."""
    for smp in (one, *batched):
        for _ in range(warmup):
            smp.sample(seeds=[0])
    seeds = list(range(requests))
    seconds, lat = drive(lambda s: one.sample(seeds=[s]), seeds, clients)
    base = ServeRow(network, nfe, "per-request", 1, clients, requests, requests / seconds,
                    statistics.median(lat), percentile(lat, 0.99), requests)  # fmt: skip
    rows = [base]
    for smp in batched:
        with RequestBatcher(smp, max_wait_ms=max_wait_ms, max_pending=max(requests, 1)) as batcher:
            seconds, lat = drive(lambda s, b=batcher: b.sample(s, timeout=600), seeds, clients)
            calls = batcher.calls
        rate = requests / seconds
        rows.append(
            ServeRow(network, nfe, "batched", smp.batch, clients, requests, rate, statistics.median(lat),
                     percentile(lat, 0.99), calls, rate / base.images_per_s)
        )  # fmt: skip
    return rows


def run_serving(
    models: Sequence[tuple[str, torch.nn.Module, dict]],
    nfes: Sequence[int],
    batches: Sequence[int],
    clients: int,
    requests: int,
    max_wait_ms: float,
    save: Callable[[list[ServeRow], dict], None],
) -> tuple[list[ServeRow], dict]:
    """Every (network, NFE) on the torch-fp16-graph path: one per-request row, one batched row per batch
    size above 1; `save(rows, facts)` after each (network, NFE)."""
    from .bench import bench_sampler, open_path, prepare_model

    path = "torch-fp16-graph"
    facts = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "path": path, "max_wait_ms": max_wait_ms}
    folder, rows = Path(tempfile.mkdtemp(prefix="amed-serve-")), []
    for name, net, kwargs in models:
        for nfe in nfes:
            model = prepare_model(f"{name}-nfe{nfe}", net, kwargs, bench_sampler(nfe), folder)
            batched = [open_path(model, path, b, folder) for b in batches if b > 1]
            rows += serve_rows(name, nfe, open_path(model, path, 1, folder), batched, clients, requests, max_wait_ms)
            save(rows, facts)
    return rows, facts


def render_serving(rows: Sequence[ServeRow], facts: dict) -> str:
    head = (
        f"GPU: **{facts['gpu']}**, torch {facts['torch']}; path {facts['path']}; RequestBatcher max_wait "
        f"{facts['max_wait_ms']} ms.\n\n"
        "| network | NFE | mode | Sampler batch | clients | requests | img/s | vs per-request | p50 ms | p99 ms "
        "| Sampler calls |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r.network} | {r.nfe} | {r.mode} | {r.batch} | {r.clients} | {r.requests} | {r.images_per_s:.0f} "
        f"| {r.speedup:.2f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.calls} |\n"
        for r in rows
    )
    return head + body


def serving_json(rows: Sequence[ServeRow], facts: dict) -> dict:
    return {"facts": facts, "rows": [asdict(r) for r in rows]}
