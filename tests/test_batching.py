import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.batching import DynamicBatcher, QueueFullError, ShuttingDownError
from service.metrics import Metrics

from .conftest import make_client
from .images import face_bytes


def row_sums(images: np.ndarray, key=None) -> np.ndarray:
    """A real (if tiny) model: one output per image, so each caller's rows can be told apart."""
    return images.reshape(len(images), -1).sum(1, keepdims=True).astype(np.float64)


def images_of(value: int, count: int = 1) -> np.ndarray:
    return np.full((count, 1, 2, 2), value, dtype=np.uint8)


def recording(sizes: list[int]):
    """row_sums, noting the size of every batch it is given."""
    def predict(images, key):
        sizes.append(len(images))
        return row_sums(images)
    return predict


def test_concurrent_submissions_share_batches_and_get_their_own_rows():
    sizes = []

    async def scenario():
        batcher = DynamicBatcher(recording(sizes), max_batch_size=8, max_wait_s=0.05, queue_limit=100, metrics=Metrics().inference)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(images_of(v, count=1 + v % 3)) for v in range(10)))
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    for value, result in enumerate(results):
        assert result.outputs.ravel().tolist() == [4.0 * value] * (1 + value % 3)
    assert max(sizes) > 1 and max(sizes) <= 8 and sum(sizes) == sum(1 + v % 3 for v in range(10))


def test_images_batch_with_their_own_kind_and_keep_their_order():
    """As the detector takes photos: a batch holds one shape (or one key), whatever arrived in between."""
    batches = []

    def shapes(images, key):
        batches.append((key, len(images)))
        return [f"{key}:{int(image.sum())}" for image in images]  # a list of rows, as the detector returns

    async def scenario():
        batcher = DynamicBatcher(shapes, max_batch_size=8, max_wait_s=0.05, queue_limit=100,
                                 metrics=Metrics().detection)
        batcher.start()
        small, large = np.ones((1, 2, 2), np.uint8), np.ones((1, 3, 3), np.uint8)
        results = await asyncio.gather(*(batcher.submit(small * v if v % 2 else large * v, key=v % 2)
                                         for v in range(1, 7)))
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    assert [r.outputs for r in results] == [["1:4"], ["0:18"], ["1:12"], ["0:36"], ["1:20"], ["0:54"]]
    assert sorted(batches) == [(0, 3), (1, 3)]


def test_a_request_larger_than_a_batch_is_split():
    sizes = []

    async def scenario():
        batcher = DynamicBatcher(recording(sizes), max_batch_size=4, max_wait_s=0, queue_limit=100, metrics=Metrics().inference)
        batcher.start()
        result = await batcher.submit(np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1))
        await batcher.close()
        return result

    assert asyncio.run(scenario()).outputs.ravel().tolist() == list(range(10))
    assert sizes == [4, 4, 2]


def test_full_queue_is_refused_and_close_drains_what_was_accepted():
    release = threading.Event()

    def slow_predict(images, key):
        release.wait(5)
        return row_sums(images)

    async def scenario():
        batcher = DynamicBatcher(slow_predict, max_batch_size=2, max_wait_s=0, queue_limit=4, metrics=Metrics().inference)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(images_of(1, 2)))  # taken by the worker, blocked
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(batcher.submit(images_of(v, 2))) for v in (2, 3)]  # fill the queue
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            await batcher.submit(images_of(4))
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0.01)
        with pytest.raises(ShuttingDownError):
            await batcher.submit(images_of(5))
        release.set()
        await closing
        return [(await job).outputs.ravel().tolist() for job in (running, *queued)]

    assert asyncio.run(scenario()) == [[4.0, 4.0], [8.0, 8.0], [12.0, 12.0]]


def test_a_failing_batch_fails_its_callers_and_the_worker_goes_on():
    calls = []

    def flaky(images, key):
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return row_sums(images)

    async def scenario():
        batcher = DynamicBatcher(flaky, max_batch_size=4, max_wait_s=0, queue_limit=10, metrics=Metrics().inference)
        batcher.start()
        with pytest.raises(RuntimeError, match="device lost"):
            await batcher.submit(images_of(1))
        result = await batcher.submit(images_of(2))
        await batcher.close()
        return result

    assert asyncio.run(scenario()).outputs.ravel().tolist() == [8.0]


def test_with_two_workers_two_batches_run_at_once_and_close_finishes_all_that_was_queued():
    """The detector's batcher: a second batch starts while the first still runs, on another thread; close() waits
    for both, and for what was queued behind them."""
    both_running, release = threading.Barrier(2, timeout=5), threading.Event()
    threads = []

    def overlapping(images, key):
        threads.append(threading.get_ident())
        if len(threads) <= 2:
            both_running.wait()  # raises BrokenBarrierError unless the other batch is running too
            release.wait(5)
        return row_sums(images)

    async def scenario():
        batcher = DynamicBatcher(overlapping, max_batch_size=1, max_wait_s=0, queue_limit=10,
                                 metrics=Metrics().detection, workers=2)
        batcher.start()
        jobs = [asyncio.ensure_future(batcher.submit(images_of(v))) for v in (1, 2, 3, 4)]
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0.05)
        assert not closing.done() and not any(job.done() for job in jobs)  # two running, two queued
        release.set()
        await closing
        return [job.result().outputs.ravel().tolist() for job in jobs]

    assert asyncio.run(scenario()) == [[4.0], [8.0], [12.0], [16.0]]
    assert len(set(threads[:2])) == 2


def test_one_worker_runs_one_batch_at_a_time_whatever_threads_its_executor_has():
    running, most = [0], [0]
    lock = threading.Lock()

    def counting(images, key):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        threading.Event().wait(0.02)
        with lock:
            running[0] -= 1
        return row_sums(images)

    async def scenario():
        batcher = DynamicBatcher(counting, max_batch_size=1, max_wait_s=0, queue_limit=10,
                                 metrics=Metrics().inference, executor=ThreadPoolExecutor(4))
        batcher.start()
        await asyncio.gather(*(batcher.submit(images_of(v)) for v in range(4)))
        await batcher.close()

    asyncio.run(scenario())
    assert most[0] == 1


def test_jobs_whose_callers_left_are_dropped_with_two_workers_and_the_rest_still_run():
    release = threading.Event()

    def held(images, key):
        release.wait(5)
        return row_sums(images)

    async def scenario():
        batcher = DynamicBatcher(held, max_batch_size=1, max_wait_s=0, queue_limit=10, metrics=Metrics().detection,
                                 workers=2)
        batcher.start()
        running = [asyncio.ensure_future(batcher.submit(images_of(v))) for v in (1, 2)]
        await asyncio.sleep(0.05)
        left = [asyncio.ensure_future(batcher.submit(images_of(v))) for v in (3, 4)]
        await asyncio.sleep(0.01)
        for job in left:
            job.cancel()
        last = asyncio.ensure_future(batcher.submit(images_of(5)))
        release.set()
        results = [(await job).outputs.ravel().tolist() for job in (*running, last)]
        await batcher.close()
        return results

    assert asyncio.run(scenario()) == [[4.0], [8.0], [20.0]]


def test_http_503_with_retry_after_when_the_queue_is_full_and_413_for_more_faces_than_it_holds(model_dir, monkeypatch):
    files = [("files", (f"{i}.png", face_bytes(), "image/png")) for i in range(3)]
    with make_client(model_dir, queue_limit=2) as client:
        response = client.post("/predict", files=files)  # could never be queued: retrying would not help
        assert response.status_code == 413 and "more than the 2 the inference queue holds" in response.json()["detail"]
        with monkeypatch.context() as patch:  # as if two other requests' faces were waiting
            patch.setattr(client.app.state.plane.batcher, "_queued_images", 2)
            response = client.post("/predict", files=files[:1])
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "queued" in response.json()["detail"]
        assert client.post("/predict", files=files[:1]).status_code == 200
