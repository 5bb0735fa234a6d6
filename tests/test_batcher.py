"""RequestBatcher: single-image requests from many threads come back exactly as the image each would get
alone, none lost or duplicated, in fewer Sampler calls than requests; overload, timeouts, errors and
closing are reported to the caller they concern."""

from __future__ import annotations

import threading

import pytest
import torch

from amed_deploy.errors import AmedError
from amed_deploy.runtime import Overloaded, RequestBatcher, RequestTimeout, Sampler


@pytest.fixture(scope="module")
def sampler(tiny_ckpt, distilled):
    return Sampler.load(tiny_ckpt, predictor=distilled[3], batch=4, device="cpu")


class Gate:
    """The sampler behind a gate the test opens: calls wait (and say they started) until it is open."""

    def __init__(self, sampler: Sampler):
        self.sampler, self.spec, self.batch = sampler, sampler.spec, sampler.batch
        self.entered, self.open = threading.Event(), threading.Event()

    def sample(self, **kwargs):
        self.entered.set()
        self.open.wait(30)
        return self.sampler.sample(**kwargs)


def test_many_threads_get_exactly_their_own_images(sampler):
    requests = [(seed, None if seed % 3 == 0 else seed % 3) for seed in range(100, 124)]
    results: dict[int, torch.Tensor] = {}
    lock = threading.Lock()

    def client(mine):
        for seed, label in mine:
            image = batcher.sample(seed, label, timeout=60)
            with lock:
                assert seed not in results  # each request answered once
                results[seed] = image

    with RequestBatcher(sampler, max_wait_ms=50) as batcher:
        threads = [threading.Thread(target=client, args=(requests[i::8],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        calls = batcher.calls
    assert sorted(results) == [seed for seed, _ in requests]  # nothing lost
    assert calls < len(requests)  # requests shared calls
    for seed, label in requests:  # the image it would get alone: a call of that one seed (padded)
        alone = sampler.sample(seeds=[seed], classes=None if label is None else [label]).images[0]
        assert torch.equal(results[seed], alone), seed


def test_a_full_queue_refuses_at_once_and_a_late_image_times_out(sampler):
    gate = Gate(sampler)
    batcher = RequestBatcher(gate, max_wait_ms=0, max_pending=2)
    first = batcher.submit(1)
    assert gate.entered.wait(10)  # the worker holds request 1 in a call that waits at the gate
    queued = [batcher.submit(2), batcher.submit(3)]
    with pytest.raises(Overloaded, match="2 requests are already waiting"):
        batcher.submit(4)
    gate.open.set()
    assert all(f.result(30).shape == first.result(30).shape for f in queued)
    gate.open.clear()
    gate.entered.clear()
    with pytest.raises(RequestTimeout, match="seed 5 within 0.05 s"):
        batcher.sample(5, timeout=0.05)
    gate.open.set()
    batcher.close()
    with pytest.raises(AmedError, match="closed"):
        batcher.submit(6)


def test_errors_reach_their_callers_and_the_worker_lives_on(sampler):
    with RequestBatcher(sampler, max_wait_ms=0) as batcher:
        with pytest.raises(AmedError, match="out of range"):
            batcher.submit(1, label=7)  # refused at the caller, before it joins anyone's batch
        with pytest.raises(AmedError, match="seed"):
            batcher.submit(-1)
        broken = Gate(sampler)
        broken.open.set()
        broken.sampler = None  # its next call fails inside the worker
        batcher.sampler = broken
        with pytest.raises(AttributeError):
            batcher.sample(2, timeout=30)
        batcher.sampler = sampler
        assert torch.equal(batcher.sample(2, timeout=30), sampler.sample(seeds=[2]).images[0])


def test_close_serves_what_is_queued(sampler):
    gate = Gate(sampler)
    batcher = RequestBatcher(gate, max_wait_ms=0)
    futures = [batcher.submit(s) for s in range(6)]
    assert gate.entered.wait(10)
    closing = threading.Thread(target=batcher.close)
    closing.start()
    gate.open.set()
    closing.join(60)
    assert not closing.is_alive() and all(f.done() and f.exception() is None for f in futures)


def test_serving_bench_measures_both_ways_on_the_same_requests(tiny_ckpt, distilled, sampler):
    """The harness of `bench --serve` (its GPU numbers are in docs/BENCHMARKS.md): one call per request
    against the batcher, every request answered, the batched run in fewer calls."""
    from amed_deploy.serving_bench import drive, render_serving, serve_rows

    one = Sampler.load(tiny_ckpt, predictor=distilled[3], batch=1, device="cpu")
    per_request, batched = serve_rows("tiny", 5, one, [sampler], clients=8, requests=16, max_wait_ms=20, warmup=1)
    assert (per_request.mode, per_request.calls, batched.mode, batched.batch) == ("per-request", 16, "batched", 4)
    assert 4 <= batched.calls < 16 and batched.requests == per_request.requests == 16
    assert batched.speedup == pytest.approx(batched.images_per_s / per_request.images_per_s)
    assert 0 < per_request.p50_ms <= per_request.p99_ms
    facts = {"gpu": "cpu", "torch": torch.__version__, "path": "torch", "max_wait_ms": 20}
    assert render_serving([per_request, batched], facts).count("| tiny | 5 |") == 2
    seen = []
    drive(lambda s: seen.append(s), list(range(10)), clients=3)
    assert sorted(seen) == list(range(10))
    with pytest.raises(ValueError, match="boom"):
        drive(lambda s: (_ for _ in ()).throw(ValueError("boom")), [1, 2], clients=2)


def test_bench_refuses_options_of_the_other_mode():
    from click.testing import CliRunner

    from amed_deploy.cli import main

    res = CliRunner().invoke(main, ["bench", "--serve", "--resume"])
    assert res.exit_code == 2 and "--resume does not apply with --serve" in res.output
    res = CliRunner().invoke(main, ["bench", "--clients", "4"])
    assert res.exit_code == 2 and "--clients does not apply without --serve" in res.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batched_images_on_the_gpu_are_the_ones_alone(tiny_ckpt, distilled):
    """On the whole-loop CUDA graph: a request's image does not depend on who shared its call."""
    smp = Sampler.load(tiny_ckpt, predictor=distilled[3], batch=4, device="cuda", cuda_graph=True)
    results: dict[int, torch.Tensor] = {}

    def client(seeds):
        for seed in seeds:
            results[seed] = batcher.sample(seed, timeout=60).clone()

    with RequestBatcher(smp, max_wait_ms=20) as batcher:
        threads = [threading.Thread(target=client, args=(range(i, 16, 4),)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert batcher.calls < 16
    assert sorted(results) == list(range(16))
    for seed, image in results.items():
        assert torch.equal(image, smp.sample(seeds=[seed]).images[0]), seed
