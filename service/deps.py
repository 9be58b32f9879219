"""FastAPI dependencies: what a route needs, taken from the app's state."""

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from fastapi import Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from service.admission import ExplanationPool, Ticket
from service.batching import DynamicBatcher
from service.imaging import ImageError
from service.model import FerModel
from service.settings import Settings
from service.uploads import read_uploads


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_model(request: Request) -> FerModel:
    model: FerModel | None = getattr(request.app.state, "model", None)
    if model is None or not model.ready:
        raise HTTPException(503, "the model is not loaded (starting or shutting down)", headers={"Retry-After": "1"})
    return model


def get_batcher(request: Request) -> DynamicBatcher:
    return request.app.state.batcher


def get_pool(request: Request) -> ExplanationPool:
    return request.app.state.explanations


def explanation_ticket(pool: ExplanationPool = Depends(get_pool)) -> Iterator[Ticket]:
    """A place among the explanation slots, taken before the request's images are decoded."""
    with pool.admitted() as ticket:
        yield ticket


@dataclass
class Uploaded:
    filenames: list[str]
    images: np.ndarray  # uint8 N x 1 x H x W at the model's input resolution
    decode_ms: float


async def get_images(request: Request, model: FerModel = Depends(get_model),
                     settings: Settings = Depends(get_settings)) -> Uploaded:
    """The request's images, decoded off the event loop, a bounded number at a time."""
    started = time.perf_counter()
    files = await read_uploads(request, settings.max_images_per_request)
    try:
        images = await run_in_threadpool(_preprocess, model, files, request.app.state.decode_slots)
    except ImageError as error:
        raise HTTPException(error.status, str(error)) from None
    return Uploaded([name for name, _ in files], images, (time.perf_counter() - started) * 1000)


def _preprocess(model: FerModel, files: list[tuple[str, bytes]], slots: threading.BoundedSemaphore) -> np.ndarray:
    """A request's images are decoded one after another, so one slot per request bounds decodes in flight
    (and the memory of full-size decoded images) to the number of slots."""
    with slots:
        return model.preprocess(files)
