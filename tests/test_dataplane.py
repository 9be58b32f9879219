"""The data plane without HTTP: the steps and rules both protocols share, and readiness under draining."""

import asyncio
import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from service.admission import Draining
from service.dataplane import DataPlane, Images, NotReady, SaliencyQuery
from service.metrics import Metrics
from service.parameters import InvalidParameter
from service.runtime.images import ImageError
from service.settings import Settings

from .images import face_bytes


def run_plane(model_dir, steps, **settings):
    """`steps(plane)` on a started plane, on an event loop of its own, as the app's lifespan runs it."""
    async def main():
        plane = DataPlane(Settings(model_dir=model_dir, device="cpu", backend="torchscript", **settings), Metrics(),
                          threading.Event())
        assert plane.readiness() == "not ready"
        with pytest.raises(NotReady):
            plane.served()
        plane.start()
        try:
            return await steps(plane)
        finally:
            await plane.close()

    return asyncio.run(main())


def test_the_plane_classifies_explains_and_counts_without_http(model_dir):
    async def steps(plane):
        assert plane.ready()
        crops = np.stack([plane.served().decode("f", face_bytes("happy", seed=i), "none").crops[0]
                          for i in range(3)])
        classified = await plane.classify(Images(crops=crops), "test")
        assert classified.probabilities.shape == (3, 7) and classified.uploaded.photos == []
        decoded = await plane.classify(Images([("a.png", face_bytes("happy", seed=0))], faces="none"), "test")
        np.testing.assert_allclose(decoded.probabilities[0], classified.probabilities[0], atol=1e-6)
        assert plane.metrics.images.labels("test")._value.get() == 4  # three crops sent as they are, one photo
        assert plane.metrics.faces.labels("test")._value.get() == 4
        blank = io.BytesIO()
        Image.new("L", (160, 120), 128).save(blank, format="PNG")
        empty = await plane.classify(Images([("blank.png", blank.getvalue())], faces="detect"), "test")
        assert len(empty.uploaded.crops) == 0  # a photo answered, no face classified
        assert plane.metrics.images.labels("test")._value.get() == 5
        assert plane.metrics.faces.labels("test")._value.get() == 4

        async def source():
            return Images(crops=crops)

        maps = {layer: (await plane.saliency(source, SaliencyQuery("gradcam", "sad", layer), "test")).maps
                for layer in ("layer3", "layer4")}
        assert maps["layer3"].shape == (3, 32, 32) and np.abs(maps["layer3"] - maps["layer4"]).max() > 1e-3
        with pytest.raises(InvalidParameter, match="unknown target"):
            await plane.saliency(source, SaliencyQuery("vanilla", "joy"), "test")
        with pytest.raises(InvalidParameter, match="layer applies to"):
            await plane.saliency(source, SaliencyQuery("vanilla", None, "layer3"), "test")
        with pytest.raises(ImageError, match="too many images: 3 in one request, the limit is 2"):
            await plane.classify(Images([("x", b"")] * 3), "test")
        filtered = await plane.filters("conv1", (0, 1), "weights", 1, 48)
        assert filtered.result.images.shape[0] == 2 and not filtered.cached

    run_plane(model_dir, steps, max_images_per_request=2)


def test_draining_turns_the_plane_not_ready_and_refuses_new_explanations(model_dir):
    async def steps(plane):
        plane.draining.set()
        assert plane.readiness() == "draining" and not plane.ready()

        async def source():
            raise AssertionError("a draining plane reads no images for an explanation")

        with pytest.raises(Draining):
            await plane.saliency(source, SaliencyQuery(), "test")
        # work already accepted is still answered while the queue drains
        crops = np.zeros((1, 1, 48, 48), dtype=np.uint8)
        assert (await plane.classify(Images(crops=crops), "test")).probabilities.shape == (1, 7)

    run_plane(model_dir, steps)


def test_every_readiness_endpoint_follows_draining(model_dir):
    from .conftest import make_client

    with make_client(model_dir) as client:
        routes = ("/readyz", "/v2/health/ready", "/v2/models/fer-resnet18/ready")
        assert [client.get(route).status_code for route in routes] == [200, 200, 200]
        client.app.state.draining.set()
        answers = [client.get(route) for route in routes]
        assert [answer.status_code for answer in answers] == [503, 400, 400]
        assert answers[0].json() == {"status": "draining"} and "draining" in answers[1].json()["error"]
        client.app.state.draining.clear()  # the lifespan's shutdown drains the pool itself


def test_photos_of_concurrent_requests_are_detected_in_one_batch(model_dir):
    """Four requests of one photo each: the detector is called once, on all four, and each request gets its own
    faces (a batch that did not fill would wait the whole 30 s)."""
    from PIL import Image
    import io

    import skimage.data

    photos = []
    for name in ("astronaut", "coffee", "astronaut", "chelsea"):
        encoded = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).resize((400, 300)).save(encoded, "JPEG")
        photos.append(encoded.getvalue())

    async def steps(plane):
        batches = []
        detect = plane.model.detector.detect

        def spy(images, min_size):
            batches.append(len(images))
            return detect(images, min_size)

        plane.model.detector.detect = spy
        results = await asyncio.gather(*(plane.classify(Images(files=[(f"{i}.jpg", photo)], faces="detect"), "test")
                                         for i, photo in enumerate(photos)))
        return batches, [len(result.uploaded.photos[0].faces) for result in results]

    batches, faces = run_plane(model_dir, steps, detect_batch_size=4, detect_wait_ms=30_000)
    assert batches == [4] and faces[0] == faces[2] == 1 and faces[1] == 0


def test_detection_runs_one_batch_per_torch_thread_at_once_each_on_its_share_of_them(model_dir):
    """MTCNN's calls may overlap: one detection worker per torch thread, each running torch on its share, while
    threads started later still get the process's count."""
    budget = torch.get_num_threads()

    async def steps(plane):
        workers = plane.model.detection_workers
        every_thread = threading.Barrier(workers, timeout=10)

        def count():  # held until every worker runs one: each thread of the pool is asked
            every_thread.wait()
            return threading.get_ident(), torch.get_num_threads()

        pool = plane.detection._executor
        counts = dict(future.result() for future in [pool.submit(count) for _ in range(workers)])
        fresh = []
        thread = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        return workers, sorted(counts.values()), fresh[0]

    workers = min(budget, Settings.model_fields["max_decodes_in_flight"].default)
    assert run_plane(model_dir, steps) == (workers, [max(1, budget // workers)] * workers, budget)
    assert run_plane(model_dir, steps, detect_workers=2) == (2, [max(1, budget // 2)] * 2, budget)
    assert run_plane(model_dir, steps, detect_workers=1) == (1, [budget], budget)


def test_the_haar_cascade_is_detected_on_one_worker_and_more_are_refused(model_dir):
    async def steps(plane):
        return plane.model.detection_workers

    assert run_plane(model_dir, steps, face_detector="haar") == 1
    with pytest.raises(ValueError, match="FER_DETECT_WORKERS=2: the haar detector"):
        run_plane(model_dir, steps, face_detector="haar", detect_workers=2)
