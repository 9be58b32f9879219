"""Dynamic batching: concurrent requests are gathered into one forward pass.

Requests queue their images; one worker takes up to `max_batch_size` images (waiting at most `max_wait_s`
after the oldest arrived for a batch to fill), runs the model in a worker thread so that the event loop
keeps accepting requests, and hands each caller exactly its own rows. The queue is bounded in images.
"""

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.metrics import Metrics


class QueueFullError(RuntimeError):
    """More images are waiting than the queue limit allows; the client should retry later."""


class ShuttingDownError(RuntimeError):
    """The service is draining before it stops and takes no new work."""


@dataclass
class _Job:
    images: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchResult:
    probabilities: np.ndarray
    queue_s: float
    inference_s: float


class DynamicBatcher:
    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], max_batch_size: int, max_wait_s: float,
                 queue_limit: int, metrics: Metrics):
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue_limit = queue_limit
        self._metrics = metrics
        self._jobs: deque[_Job] = deque()
        self._queued_images = 0
        self._arrived = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
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

    async def submit(self, images: np.ndarray) -> BatchResult:
        """Probabilities for `images` (uint8 N x 1 x H x W), computed with whatever else is queued."""
        if self._closing:
            raise ShuttingDownError("the service is shutting down")
        if self._queued_images + len(images) > self.queue_limit:
            raise QueueFullError(f"{self._queued_images} images are queued (limit {self.queue_limit})")
        loop = asyncio.get_running_loop()
        # A request larger than a batch is split, so one big request cannot starve the others.
        jobs = [_Job(images[i:i + self.max_batch_size], loop.create_future())
                for i in range(0, len(images), self.max_batch_size)]
        self._jobs.extend(jobs)
        self._queued_images += len(images)
        self._metrics.queue_depth.set(self._queued_images)
        self._arrived.set()
        results = await asyncio.gather(*(job.future for job in jobs))
        return BatchResult(np.concatenate([r.probabilities for r in results]),
                           max(r.queue_s for r in results), sum(r.inference_s for r in results))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._jobs:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            deadline = self._jobs[0].enqueued + self.max_wait_s
            while self._queued_images < self.max_batch_size and not self._closing:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take_batch()
            await self._run_batch(loop, batch)

    def _take_batch(self) -> list[_Job]:
        batch, size = [], 0
        while self._jobs and size + len(self._jobs[0].images) <= self.max_batch_size:
            job = self._jobs.popleft()
            batch.append(job)
            size += len(job.images)
        self._queued_images -= size
        self._metrics.queue_depth.set(self._queued_images)
        return batch

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> None:
        started = time.perf_counter()
        images = np.concatenate([job.images for job in batch])
        self._metrics.batch_size.observe(len(images))
        for job in batch:
            self._metrics.queue_wait.observe(started - job.enqueued)
        try:
            probabilities = await loop.run_in_executor(self._executor, self._predict, images)
        except Exception as error:  # the callers see the failure; the worker keeps serving
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        inference_s = time.perf_counter() - started
        self._metrics.inference_time.observe(inference_s)
        offset = 0
        for job in batch:
            rows = probabilities[offset:offset + len(job.images)]
            offset += len(job.images)
            if not job.future.done():  # a caller that went away no longer waits
                job.future.set_result(BatchResult(rows, started - job.enqueued, inference_s))
