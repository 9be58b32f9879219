"""FastAPI dependencies: what a route needs, taken from the app's state."""

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from service.admission import ExplanationPool, Ticket
from service.batching import DynamicBatcher
from service.imaging import ImageError, pixels_declared
from schemas.api import FACES_DESCRIPTION, FacesMode
from service.model import FerModel
from service.runtime.photos import Photo
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
    photos: list[Photo]  # one per uploaded image, with its faces cropped at the model's input resolution
    decode_ms: float

    @property
    def crops(self) -> np.ndarray:
        """Every face of every image, in order: uint8 N x 1 x H x W, one batch for the model."""
        return np.concatenate([photo.crops for photo in self.photos])


async def _decode(request: Request, model: FerModel, settings: Settings, faces: str, keep_upright: bool) -> Uploaded:
    """The request's images, decoded and their faces found off the event loop, a bounded number at a time."""
    started = time.perf_counter()
    files = await read_uploads(request, settings.max_images_per_request)
    try:
        photos = await preprocess_bounded(request, model, files, faces, keep_upright)
    except ImageError as error:
        raise HTTPException(error.status, str(error)) from None
    return Uploaded(photos, (time.perf_counter() - started) * 1000)


# Face crops sent whole (faces=none) of at most this many pixels in all decode on the event loop: in well under a
# millisecond, less than handing them to a worker thread and back costs (single-image /predict: 183 -> 252 img/s).
INLINE_DECODE_PIXELS = 256 * 256
INLINE_DECODE_BYTES = 256 * 1024


async def preprocess_bounded(request: Request, model: FerModel, files: list[tuple[str, bytes]], faces: str,
                             keep_upright: bool) -> list[Photo]:
    """A request's images decoded (and their faces found) one after another on a worker thread, so one slot per
    request bounds decodes in flight (and the memory of full-size decoded images) to the number of slots. A
    request waits for its slot on the event loop, where waiting holds no thread. Small face crops are decoded on
    the event loop itself (their headers say how small, before anything is decoded)."""
    if faces == "none" and sum(len(data) for _, data in files) <= INLINE_DECODE_BYTES:
        declared = [pixels_declared(data) for _, data in files]
        if None not in declared and sum(declared) <= INLINE_DECODE_PIXELS:
            return model.preprocess(files, faces, keep_upright)
    async with request.app.state.decode_slots:
        return await run_in_threadpool(model.preprocess, files, faces, keep_upright)


FacesQuery = Annotated[FacesMode, Query(description=FACES_DESCRIPTION)]


async def get_images(request: Request, faces: FacesQuery = "auto", model: FerModel = Depends(get_model),
                     settings: Settings = Depends(get_settings)) -> Uploaded:
    return await _decode(request, model, settings, faces, keep_upright=False)


async def get_photos(request: Request, faces: FacesQuery = "auto", model: FerModel = Depends(get_model),
                     settings: Settings = Depends(get_settings)) -> Uploaded:
    """As `get_images`, keeping each decoded photo to draw explanations on."""
    return await _decode(request, model, settings, faces, keep_upright=True)
