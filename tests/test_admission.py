"""Explanation work is bounded (slots, cost budgets, picture sizes), refused before decoding when full, and
cancelled between forward passes when its client leaves or the service drains."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from service.admission import Busy, Draining, ExplanationPool
from service.runtime.explain import Cancelled, Explainer
from service.runtime.modeldir import load_eager_model, load_manifest

from .conftest import make_client
from .images import face_bytes, upload


@pytest.fixture(scope="module")
def one_slot(model_dir):
    with make_client(model_dir, explain_workers=1, explain_queue=0, max_images_per_request=64,
                     max_explanation_passes=64 * 16) as client:
        yield client


def test_a_full_pool_answers_503_before_decoding(one_slot):
    slow = upload(*[face_bytes("happy", seed=i) for i in range(48)])
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(one_slot.post, "/saliency?method=smoothgrad&format=json", files=slow)
        deadline = time.monotonic() + 30
        while not one_slot.app.state.plane.explanations.admission.tickets and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.perf_counter()
        refused = one_slot.post("/saliency", files=upload(b"not an image at all"))  # never decoded
        waited = time.perf_counter() - started
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
        assert "too many explanation requests running or waiting" in refused.json()["detail"] and waited < 2
        assert one_slot.get("/filters/layer4.1.conv2?filters=0-1&steps=7").status_code == 503  # uncached: same slots
        assert running.result().status_code == 200
    assert one_slot.post("/predict", files=upload(face_bytes("sad"))).status_code == 200


def test_cost_budgets_are_422_naming_the_budget(model_dir):
    with make_client(model_dir, max_explanation_passes=100, max_filter_cost=16 * 16 * 48 * 48) as client:
        over = client.post("/saliency?method=smoothgrad", files=upload(*[face_bytes()] * 8))
        assert over.status_code == 422 and "budget of 100" in over.json()["detail"]
        assert client.post("/saliency?method=vanilla", files=upload(*[face_bytes()] * 8)).status_code == 200
        # occlusion's cost follows the network's input side (32 here): 7 x 7 windows + 1 pass = 50 per face
        assert client.post("/saliency?method=occlusion", files=upload(*[face_bytes()] * 2)).status_code == 200
        over = client.post("/saliency?method=occlusion", files=upload(*[face_bytes()] * 3))
        assert over.status_code == 422 and "costs 150 forward passes" in over.json()["detail"]
        filters = client.get("/filters/layer4.1.conv2?filters=0-31&steps=64&size=48")
        assert filters.status_code == 422 and "exceeds the budget" in filters.json()["detail"]


def test_pictures_are_capped_in_pixels_before_any_work(client):
    started = time.perf_counter()
    response = client.get("/filters/layer4.1.conv2?filters=0-63&steps=500&size=128&scale=16&columns=64")
    assert response.status_code == 422 and "more than the limit" in response.json()["detail"]
    assert time.perf_counter() - started < 2


def test_draining_cancels_queued_and_running_work(model_dir):
    manifest = load_manifest(model_dir)
    explainer = Explainer(load_eager_model(model_dir, manifest, torch.device("cpu")), "resnet18",
                          torch.device("cpu"))
    draining = threading.Event()
    pool = ExplanationPool(workers=1, max_waiting=1, draining=draining, poll_s=0.05)

    async def scenario():
        async def one():
            with pool.admitted() as ticket:
                return await pool.run(ticket, None, explainer.filter_inputs, "layer4.1.conv2", [0, 1], 100_000)

        tasks = [asyncio.create_task(one()), asyncio.create_task(one())]  # one running, one waiting
        await asyncio.sleep(0.3)
        with pytest.raises(Busy):
            with pool.admitted():
                pass
        started = time.perf_counter()
        pool.drain()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return results, time.perf_counter() - started

    results, seconds = asyncio.run(scenario())
    assert all(isinstance(result, Draining) for result in results), results
    assert seconds < 5  # stopped at the next gradient-ascent step, not after 100,000
    with pytest.raises(Draining):
        with pool.admitted():
            pass
    pool.close()


def test_a_client_that_leaves_cancels_its_work(model_dir):
    manifest = load_manifest(model_dir)
    explainer = Explainer(load_eager_model(model_dir, manifest, torch.device("cpu")), "resnet18",
                          torch.device("cpu"))
    pool = ExplanationPool(workers=1, max_waiting=0, draining=threading.Event(), poll_s=0.05)

    class GoneAfter:
        """A request whose client disconnects after `seconds`."""

        def __init__(self, seconds: float):
            self.deadline = time.monotonic() + seconds

        async def is_disconnected(self) -> bool:
            return time.monotonic() > self.deadline

    async def scenario():
        with pool.admitted() as ticket:
            return await pool.run(ticket, GoneAfter(0.3), explainer.filter_inputs, "layer4.1.conv2", [0], 100_000)

    started = time.perf_counter()
    with pytest.raises(Cancelled):
        asyncio.run(scenario())
    assert time.perf_counter() - started < 5
    pool.close()
