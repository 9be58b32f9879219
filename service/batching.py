"""Dynamic batching: concurrent requests are gathered into one call of a model (the classifier, the face detector).

Requests queue their images; a worker takes up to `max_batch_size` images of one kind (waiting at most
`max_wait_s` after the oldest arrived for a batch to fill), runs the model in a worker thread so that the event
loop keeps accepting requests, and hands each caller exactly its own rows. Up to `workers` batches run at once
(one for the classifier, whose calls use every core; one per core for MTCNN), and may finish in any order. Images
batch together when their `key` is the same (by default their shape: the detector takes a batch of same-size
photos). The queue is bounded in images.
"""

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.metrics import BatcherMetrics


class QueueFullError(RuntimeError):
    """More images are waiting than the queue limit allows; the client should retry later."""


class ShuttingDownError(RuntimeError):
    """The service is draining before it stops and takes no new work."""


@dataclass
class _Job:
    images: np.ndarray
    key: Hashable
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchResult:
    outputs: np.ndarray | list  # the model's rows for the caller's images, in order
    queue_s: float
    run_s: float


class DynamicBatcher:
    def __init__(self, run: Callable[[np.ndarray, Hashable], Sequence], max_batch_size: int, max_wait_s: float,
                 queue_limit: int, metrics: BatcherMetrics, name: str = "inference", workers: int = 1,
                 executor: ThreadPoolExecutor | None = None):
        """`run(images, key)`: the model's rows (an array or a list) for a batch of images that share `key`; up to
        `workers` calls at once, on `executor`'s threads (default: a pool of `workers` threads; it needs at least
        `workers`, and the batcher shuts it down on closing)."""
        self._run_model = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue_limit = queue_limit
        self._metrics = metrics
        self._jobs: deque[_Job] = deque()
        self._queued_images = 0
        self._arrived = asyncio.Event()
        self._closing = False
        self._executor = executor or ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._free_workers = asyncio.Semaphore(workers)
        self._running: set[asyncio.Task] = set()
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Refuse new work, finish everything queued, stop."""
        self._closing = True
        self._arrived.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)

    async def submit(self, images: np.ndarray, key: Hashable = None) -> BatchResult:
        """The model's rows for `images` (N x ...), computed with whatever else of the same `key` (default: the
        images' shape) is queued."""
        if self._closing:
            raise ShuttingDownError("the service is shutting down")
        if self._queued_images + len(images) > self.queue_limit:
            raise QueueFullError(f"{self._queued_images} images are queued (limit {self.queue_limit})")
        loop = asyncio.get_running_loop()
        # A request larger than a batch is split, so one big request cannot starve the others.
        key = images.shape[1:] if key is None else key
        jobs = [_Job(images[i:i + self.max_batch_size], key, loop.create_future())
                for i in range(0, len(images), self.max_batch_size)]
        self._jobs.extend(jobs)
        self._queued_images += len(images)
        self._metrics.queue_depth.set(self._queued_images)
        self._arrived.set()
        results = await asyncio.gather(*(job.future for job in jobs))
        outputs = [r.outputs for r in results]
        return BatchResult(np.concatenate(outputs) if isinstance(outputs[0], np.ndarray) else sum(outputs, []),
                           max(r.queue_s for r in results), sum(r.run_s for r in results))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._free_workers.acquire()  # a batch is formed once a worker can take it: it fills meanwhile
            if not self._jobs:
                self._free_workers.release()
                if self._closing:
                    await asyncio.gather(*self._running, return_exceptions=True)
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            deadline = self._jobs[0].enqueued + self.max_wait_s
            while self._queued_like(self._jobs[0].key) < self.max_batch_size and not self._closing:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take_batch()
            if not batch:
                self._free_workers.release()
                continue
            running = loop.create_task(self._run_batch(loop, batch))
            self._running.add(running)
            running.add_done_callback(self._finished)

    def _finished(self, running: asyncio.Task) -> None:
        self._running.discard(running)
        self._free_workers.release()

    def _queued_like(self, key: Hashable) -> int:
        """Images queued that could join a batch of `key`."""
        return sum(len(job.images) for job in self._jobs if job.key == key)

    def _take_batch(self) -> list[_Job]:
        """The oldest job and, in order, the queued jobs of its key that fit with it; the others keep their places.
        Jobs whose caller has gone (cancelled) are dropped, so that they neither run nor hold the queue's room."""
        key = self._jobs[0].key
        batch, others, size, dropped = [], deque(), 0, 0
        while self._jobs:
            job = self._jobs.popleft()
            if job.future.done():
                dropped += len(job.images)
            elif job.key == key and size + len(job.images) <= self.max_batch_size:
                batch.append(job)
                size += len(job.images)
            else:
                others.append(job)
        self._jobs = others
        self._queued_images -= size + dropped
        self._metrics.queue_depth.set(self._queued_images)
        return batch

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            images = np.concatenate([job.images for job in batch])
            self._metrics.batch_size.observe(len(images))
            for job in batch:
                self._metrics.queue_wait.observe(started - job.enqueued)
            outputs = await loop.run_in_executor(self._executor, self._run_model, images, batch[0].key)
            run_s = time.perf_counter() - started
            self._metrics.run_time.observe(run_s)
            offset = 0
            for job in batch:
                rows = outputs[offset:offset + len(job.images)]
                offset += len(job.images)
                if not job.future.done():  # a caller that went away no longer waits
                    job.future.set_result(BatchResult(rows, started - job.enqueued, run_s))
        except BaseException as error:  # the callers see the failure (none is left waiting); the worker goes on
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(error if isinstance(error, Exception) else
                                             RuntimeError(f"the batch was stopped: {error!r}"))
            if not isinstance(error, Exception):
                raise
