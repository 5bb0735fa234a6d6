"""Request batching for services: single-image requests (seed, class) are gathered for up to a few
milliseconds into one call of a fixed-batch Sampler (the rest of the batch padded), and each caller gets
its own image back: exactly the image it would get alone, since every image comes from its own seed.

    with RequestBatcher(Sampler.load("amed5.onnx", batch=16, device="cuda"), max_wait_ms=2) as batcher:
        image = batcher.sample(seed=123, label=4, timeout=1.0)   # from any number of threads

One worker thread runs the calls; the queue of waiting requests is bounded, so an overloaded service
refuses at once (`Overloaded`) instead of queueing without limit, and a caller that stops waiting
(`RequestTimeout`) has its request dropped if it has not started."""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from dataclasses import dataclass, field

from torch import Tensor

from ..errors import AmedError
from ..noise import check_seed, class_list
from .sampler import Sampler


class Overloaded(AmedError):
    """The queue of waiting requests is full."""


class RequestTimeout(AmedError):
    """A request's image was not ready within its timeout."""


@dataclass
class _Request:
    seed: int
    label: int | None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


_STOP = object()


class RequestBatcher:
    """Single-image requests -> batched `Sampler.sample` calls (see the module docstring). Thread-safe."""

    def __init__(self, sampler: Sampler, max_wait_ms: float = 2.0, max_pending: int = 1024):
        if max_wait_ms < 0 or max_pending < 1:
            raise AmedError(f"need max_wait_ms >= 0 and max_pending >= 1, got {max_wait_ms}, {max_pending}")
        self.sampler = sampler
        self.max_wait = max_wait_ms / 1000
        self.max_pending = max_pending
        self.calls = 0  # Sampler calls made so far
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._lock = threading.Lock()
        self._closed = False
        self._worker = threading.Thread(target=self._serve, name="amed-request-batcher", daemon=True)
        self._worker.start()

    def submit(self, seed: int, label: int | None = None) -> concurrent.futures.Future:
        """Queue one image; its future's result is the image [C,H,W] on the sampler's device."""
        label_dim = self.sampler.spec.label_dim
        request = _Request(check_seed(seed), None if label is None else class_list(label, 1, label_dim)[0])
        with self._lock:
            if self._closed:
                raise AmedError("the request batcher is closed")
            try:
                self._queue.put_nowait(request)
            except queue.Full:
                raise Overloaded(
                    f"{self.max_pending} requests are already waiting: retry later, or serve with more Samplers"
                ) from None
        return request.future

    def sample(self, seed: int, label: int | None = None, timeout: float | None = None) -> Tensor:
        """The image of one request, waiting at most `timeout` seconds for it."""
        future = self.submit(seed, label)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()  # dropped if its batch has not started
            raise RequestTimeout(f"no image for seed {seed} within {timeout} s") from None

    def close(self) -> None:
        """Refuse new requests, serve every one already queued, and stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._worker.join()

    def __enter__(self) -> RequestBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _gather(self) -> tuple[list[_Request], bool]:
        """The next batch: the first waiting request, then whatever arrives within max_wait of it, up to
        the sampler's batch. Also whether the batcher was closed meanwhile."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch, deadline = [first], time.monotonic() + self.max_wait
        while len(batch) < self.sampler.batch:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _serve(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._gather()
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]  # drops cancelled ones
            if not live:
                continue
            labels = [r.label for r in live]
            try:
                out = self.sampler.sample(
                    seeds=[r.seed for r in live], classes=None if all(x is None for x in labels) else labels
                )
                self.calls += 1
            except BaseException as e:  # every caller of the batch gets the error; the worker lives on
                for r in live:
                    r.future.set_exception(e)
                continue
            for i, r in enumerate(live):
                r.future.set_result(out.images[i])
