"""The data plane: a request's steps and the service's rules, whichever protocol carried the request (as KServe's
`DataPlane` under its REST and v2 handlers, or LitServe's `LitAPI` under its specs).

REST routes and the Open Inference Protocol's adapters parse their protocol, call one method here and encode the
answer. The plane owns the model, the decode slots, the dynamic batchers (face detection's and the classifier's), the
admission of explanation work, the cost budgets, draining, readiness and the image counters. It raises typed errors
(`ImageError`, `InvalidParameter`, `NotReady`, the batcher's and the pool's), which service/errors.py alone maps to
statuses; nothing here knows HTTP.
"""

import asyncio
import base64
import binascii
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

import anyio
import numpy as np
import torch
from starlette.concurrency import run_in_threadpool

from schemas.api import VideoInfo
from service.admission import Admission, ExplanationPool
from service.batching import DynamicBatcher
from service.metrics import Metrics
from service.model import FerModel, torch_worker_pool
from service.parameters import (
    VIDEO_SALIENCY_ADVICE,
    InvalidParameter,
    check_saliency_cost,
    check_saliency_layer,
    checked_filter_request,
    parse_target,
)
from service.photos import Pending, Photo, prepare
from service.runtime.explain import METHODS, Cancelled
from service.runtime.filters import FilterRequest, FilterResult
from service.runtime.images import ImageError, declared_size, excerpt
from service.settings import Settings
from service.tracking import FaceTracker, Smoother, TrackTally
from service.video import SampledFrame, VideoLimits, VideoQuery, VideoReader

# Face crops taken whole (faces=none, or auto's crops) of at most this many pixels in all decode on the event loop:
# in well under a millisecond, less than handing them to a worker thread and back costs (single-image /predict:
# 183 -> 252 img/s).
INLINE_DECODE_PIXELS = 256 * 256
INLINE_DECODE_BYTES = 256 * 1024


def check_image_count(count: int, limit: int) -> None:
    """Before anything is decoded: one request's images are bounded."""
    if count > limit:
        raise ImageError(f"too many images: {count} in one request, the limit is {limit}", status=413)


def decode_base64(name: str, text: str | bytes) -> bytes:
    """An image sent as base64 text (a data URL too), as JSON bodies of both protocols send them."""
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    if text.startswith("data:") and "," in text[:100]:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{excerpt(name)}: not valid base64: images sent as JSON must be base64 (or send "
                         "binary data)") from None


class NotReady(RuntimeError):
    """The model is not loaded: the service is starting or shutting down."""


class Connection(Protocol):
    """The client's connection, watched so that explanation work stops when the client has gone."""

    async def is_disconnected(self) -> bool: ...


@dataclass
class Images:
    """A request's images: encoded files (decoded here, their faces found as `faces` says), or face crops already
    at the model's input size (uint8 N x 1 x H x W, each taken whole)."""

    files: list[tuple[str, bytes]] = field(default_factory=list)
    crops: np.ndarray | None = None
    faces: str = "auto"


@dataclass
class Uploaded:
    photos: list[Photo]  # one per decoded file, with its faces; none for crops sent as they are
    crops: np.ndarray  # every face of every image, in order: uint8 N x 1 x H x W, one batch for the model
    decode_ms: float

    @property
    def images(self) -> int:
        """Images answered: the photos, or the crops sent as they are."""
        return len(self.photos) or len(self.crops)


@dataclass
class Classified:
    uploaded: Uploaded
    probabilities: np.ndarray  # N x classes, a row per face
    queue_ms: float
    inference_ms: float


@dataclass
class SaliencyQuery:
    method: str = "vanilla"
    target: str | int | None = None  # a class name or index; None: the predicted class
    layer: str | None = None  # Grad-CAM's layer; None: the architecture's default


@dataclass
class Explained:
    uploaded: Uploaded
    maps: np.ndarray  # float32 N x side x side
    targets: list[int]
    probabilities: np.ndarray  # N x classes, as classify gives them (the model's TTA and calibration)
    explain_ms: float
    rendered: object = None  # what `render` drew of it, within the explanation slot


@dataclass
class Filtered:
    request: FilterRequest  # as checked: its steps and size are what was computed
    result: FilterResult
    cached: bool


# Batches of frames a video's reader may be ahead of the frame its caller is given (being decoded or detected: the
# decode slots bound how many of them are at once).
VIDEO_WINDOW = 2


class HeldSlot:
    """A decode slot a frame holds, given back once however many ways its work ends."""

    def __init__(self, slots: asyncio.Semaphore):
        self.slots, self.held = slots, True

    def release(self, _=None) -> None:
        if self.held:
            self.held = False
            self.slots.release()


def iter_queue(queue: asyncio.Queue):
    """What is left in the queue, taken out."""
    while not queue.empty():
        yield queue.get_nowait()


ImageSource = Callable[[], Awaitable[Images]]  # reads a request's images once admission lets it
VideoSource = Callable[[], Awaitable[tuple[str, BinaryIO]]]  # a request's video: its name and a seekable file


@dataclass
class TrackedFrame:
    """A sampled frame with its faces, each face's track and probabilities (raw, as classify gives them, and
    smoothed over its track)."""

    frame: SampledFrame
    photo: Photo  # boxes in the upright frame's pixels as stored; `upright` kept when frames are asked for
    track_ids: list[int]
    probabilities: np.ndarray  # faces x classes
    smoothed: np.ndarray
    maps: np.ndarray | None = None  # faces x side x side saliency maps of the predicted class, when asked for


@dataclass
class VideoDone:
    frames_sampled: int
    frames_decoded: int
    tracks: dict[int, TrackTally]
    timing_ms: dict[str, float]


VideoEvent = VideoInfo | TrackedFrame | VideoDone


class DataPlane:
    def __init__(self, settings: Settings, metrics: Metrics, draining: threading.Event):
        self.settings = settings
        self.metrics = metrics
        self.draining = draining  # set by the server the moment SIGTERM arrives
        self.model: FerModel | None = None
        self.batcher: DynamicBatcher | None = None
        self.detection: DynamicBatcher | None = None
        self.explanations: ExplanationPool | None = None
        self.decode_slots: asyncio.Semaphore | None = None
        self.videos: Admission | None = None

    # --- life and readiness ----------------------------------------------------------------------------
    def start(self) -> None:
        """Load, verify and warm up the model; start the batcher (on the running event loop)."""
        model = FerModel(self.settings, self.metrics)
        model.load()
        settings = self.settings
        self.batcher = DynamicBatcher(lambda crops, _: model.predict(crops), settings.max_batch_size,
                                      settings.batch_wait_ms / 1000, settings.queue_limit, self.metrics.inference)
        # Photos of concurrent requests are detected together, as their faces are classified together.
        # A batch holds at most one photo per decode slot: a larger one could never fill.
        workers = model.detection_workers
        self.detection = DynamicBatcher(model.detect, min(settings.detect_batch_size, settings.max_decodes_in_flight),
                                        settings.detect_wait_ms / 1000,
                                        settings.max_decodes_in_flight, self.metrics.detection, "detection",
                                        workers, torch_worker_pool(workers, "detection"))
        self.batcher.start()
        self.detection.start()
        self.decode_slots = asyncio.Semaphore(settings.max_decodes_in_flight)
        self.explanations = ExplanationPool(settings.explain_workers, settings.explain_queue, self.draining)
        self.videos = Admission(settings.max_videos_in_flight, "videos being analysed", self.draining)
        self.model = model

    async def close(self) -> None:
        """Stop taking work, cancel explanations, let the queued images through, stop."""
        self.model.ready = False
        self.explanations.close()
        await self.detection.close()
        # Photos already detected are still being cut out: their faces go to the classifier before it closes.
        for _ in range(self.settings.max_decodes_in_flight):
            await self.decode_slots.acquire()
        await self.batcher.close()

    def readiness(self) -> str:
        """`ready`, `draining` (from the moment SIGTERM arrives) or `not ready` (starting, or stopped): what every
        readiness endpoint of every protocol answers."""
        if self.draining.is_set():
            return "draining"
        return "ready" if self.model is not None and self.model.ready else "not ready"

    def ready(self) -> bool:
        return self.readiness() == "ready"

    def loaded(self) -> FerModel | None:
        """The model whose manifest can be described, ready or not (starting and draining servers describe it)."""
        return self.model if self.model is not None and self.model.manifest is not None else None

    def served(self) -> FerModel:
        """The model, for work; NotReady while it is not loaded. Requests that arrive while the service drains
        are still answered: their connection was accepted before the listener closed."""
        if self.model is None or not self.model.ready:
            raise NotReady("the model is not loaded (starting or shutting down)")
        return self.model

    # --- images --------------------------------------------------------------------------------------
    async def decode(self, images: Images, keep_upright: bool = False) -> Uploaded:
        """Each file decoded and its faces found: the files taken whole (faces=none, or auto's crops) together, each
        photo to detect on its own (`_photo`), all at once. Small face crops taken whole are decoded on the event loop
        itself (their headers say how small, before anything is decoded). Crops sent as they are are used as they
        are. `keep_upright` keeps each decoded photo, to draw explanations on."""
        model = self.served()
        if images.crops is not None:
            return Uploaded([], np.ascontiguousarray(images.crops), 0.0)
        check_image_count(len(images.files), self.settings.max_images_per_request)
        started = time.perf_counter()
        # each header read once: it decides auto's crops and the inline decode
        sizes = [declared_size(data) for _, data in images.files] if images.faces != "detect" else None
        if self._decodes_inline(images, sizes):
            photos = [model.decode(name, data, "none", keep_upright) for name, data in images.files]
        else:
            modes = [model.face_mode(size, images.faces) for size in sizes or [None] * len(images.files)]
            whole = [file for file, mode in zip(images.files, modes) if mode == "none"]
            detected = [file for file, mode in zip(images.files, modes) if mode == "detect"]
            done = await asyncio.gather(self._whole_images(whole, keep_upright),
                                        *(self._photo(name, data, keep_upright) for name, data in detected),
                                        return_exceptions=True)
            for result in done:  # every file has finished (no thread left working) before an error is raised
                if isinstance(result, BaseException):
                    raise result
            whole_photos, detected_photos = iter(done[0]), iter(done[1:])
            photos = [next(whole_photos) if mode == "none" else next(detected_photos) for mode in modes]
        crops = np.concatenate([photo.crops for photo in photos])
        return Uploaded(photos, crops, (time.perf_counter() - started) * 1000)

    async def _whole_images(self, files: list[tuple[str, bytes]], keep_upright: bool) -> list[Photo]:
        """Files taken whole, decoded one after another on one worker thread within one decode slot (a thread hand-off
        per file would cost more than decoding a face crop)."""
        if not files:
            return []
        model = self.model
        async with self.decode_slots:
            return await run_in_threadpool(lambda: [model.decode(name, data, "none", keep_upright)
                                                    for name, data in files])

    async def _photo(self, name: str, data: bytes, keep_upright: bool) -> Photo:
        """A photo decoded on a worker thread, its faces found by the detection batcher with other photos, and cut
        out. A decode slot is held from decoding to cropping, so that the slots bound the decoded photos in memory; a
        photo waits for its slot on the event loop, where waiting holds no thread."""
        model = self.model
        async with self.decode_slots:
            return await self._detected(await run_in_threadpool(model.decode, name, data, "detect", keep_upright),
                                        keep_upright)

    async def _detected(self, pending: Pending, keep_upright: bool) -> Photo:
        """A decoded photo's (or video frame's) faces found by the detection batcher with other photos', and cut out
        on a worker thread."""
        found = (await self.detection.submit(pending.detection_image[None], pending.key)).outputs[0]
        return await run_in_threadpool(self.model.finish, pending, found, keep_upright)

    def _decodes_inline(self, images: Images, sizes: list[tuple[int, int] | None] | None) -> bool:
        """Small face crops taken whole (faces=none, or auto's crops), whose headers declare few pixels in all."""
        if sizes is None or None in sizes or sum(len(data) for _, data in images.files) > INLINE_DECODE_BYTES:
            return False
        if any(self.model.face_mode(size, images.faces) != "none" for size in sizes):
            return False
        return sum(width * height for width, height in sizes) <= INLINE_DECODE_PIXELS

    def _count(self, endpoint: str, images: int, faces: int) -> None:
        self.metrics.images.labels(endpoint).inc(images)
        self.metrics.faces.labels(endpoint).inc(faces)

    # --- the model's steps -------------------------------------------------------------------------------
    async def classify(self, images: Images, endpoint: str) -> Classified:
        """Probabilities for every face, through the dynamic batcher with every other request's faces (a full
        queue or a draining batcher raises)."""
        self.served()
        uploaded = await self.decode(images)
        probabilities, queue_ms, inference_ms = await self._classified(uploaded.crops)
        self._count(endpoint, uploaded.images, len(uploaded.crops))
        return Classified(uploaded, probabilities, queue_ms, inference_ms)

    async def _classified(self, crops: np.ndarray) -> tuple[np.ndarray, float, float]:
        """float32 probabilities N x classes of face crops through the classifier's batcher (none for no crops), and
        the ms they queued and ran."""
        if not len(crops):
            return np.zeros((0, len(self.model.classes)), dtype=np.float32), 0.0, 0.0
        if len(crops) > self.batcher.queue_limit:  # it could never be queued, so not a 503 to retry
            raise ImageError(f"too many faces: {len(crops)} in one request, more than the {self.batcher.queue_limit} "
                             "the inference queue holds (FER_QUEUE_LIMIT): send fewer images", status=413)
        result = await self.batcher.submit(crops)
        return np.asarray(result.outputs, dtype=np.float32), result.queue_s * 1000, result.run_s * 1000

    def check_saliency_query(self, query: SaliencyQuery) -> int | None:
        """The target's index; raises InvalidParameter for a method, target or layer the model cannot take."""
        model = self.served()
        for name, value, kinds in (("method", query.method, str), ("target", query.target, (str, int)),
                                   ("layer", query.layer, str)):
            if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
                raise InvalidParameter(f"parameter `{name}`: {excerpt(repr(value), 40)} is not a "
                                       f"{'name' if name != 'target' else 'class name or index'}")
        if query.method not in METHODS:
            raise InvalidParameter(f"parameter `method`: unknown saliency method {query.method!r}; expected one of "
                                   f"{', '.join(METHODS)}")
        if query.layer is not None and not METHODS[query.method].uses_layer:
            raise InvalidParameter(f"layer applies to {', '.join(n for n, m in METHODS.items() if m.uses_layer)} "
                                   "only")
        if query.layer is not None:
            check_saliency_layer(model, query.layer)
        return parse_target(query.target, model.classes)

    async def saliency(self, source: ImageSource, query: SaliencyQuery, endpoint: str,
                       connection: Connection | None = None, keep_upright: bool = False,
                       check_uploaded: Callable[[Uploaded], None] | None = None,
                       render: Callable[[Explained], object] | None = None) -> Explained:
        """One map per face, computed as one batch on the explanation pool. Admitted before the images are read
        and decoded (Busy or Draining at once when the slots are full); the cost budget is checked on the faces
        found, and `check_uploaded(uploaded)` lets the caller refuse what its answer could not carry, before any work;
        `render(explained)`, the caller's drawing of the answer, runs on a worker thread within the same slot.

        Each face's probabilities and predicted class are the ones classify gives it (through the batcher, with the
        model's TTA and calibration), and its map explains that class unless the query names another: one answer
        per face whichever endpoint asks. The map is taken on the face as sent (not its mirror image)."""
        model = self.served()
        target = self.check_saliency_query(query)  # before any image is read
        with self.explanations.admitted() as ticket:
            uploaded = await self.decode(await source(), keep_upright)
            check_saliency_cost(model, query.method, len(uploaded.crops), self.settings.max_explanation_passes)
            if check_uploaded is not None:
                check_uploaded(uploaded)
            started = time.perf_counter()
            side = model.explainer.model.image_size
            maps, targets = np.zeros((0, side, side), dtype=np.float32), []
            probabilities = (await self._classified(uploaded.crops))[0]
            if len(uploaded.crops):
                targets = torch.from_numpy(probabilities.argmax(1)) if target is None \
                    else torch.full((len(uploaded.crops),), target)
                maps, targets, _ = await self.explanations.run(
                    ticket, connection, model.saliency, uploaded.crops, query.method, targets, query.layer)
                maps, targets = maps.numpy(), targets.tolist()
            explained = Explained(uploaded, maps.astype(np.float32), targets, probabilities.astype(np.float32),
                                  (time.perf_counter() - started) * 1000)
            if render is not None:
                explained.rendered = await run_in_threadpool(render, explained)
        self._count(endpoint, uploaded.images, len(uploaded.crops))
        return explained

    async def filters(self, layer: str, filters: tuple[int, ...], mode: str, steps: int, size: int,
                      connection: Connection | None = None,
                      check_request: Callable[[int], None] | None = None) -> Filtered:
        """The filters' visualisation, and whether it was cached. Checked against the network and the limits
        (`check_request(side)` lets the caller refuse what its answer could not carry); computed within the cost
        budget and an explanation slot when it was not cached."""
        model = self.served()
        request = checked_filter_request(model, self.settings, layer, filters, mode, steps, size)
        if check_request is not None:
            check_request(request.size)
        result = await run_in_threadpool(model.cached_filters, request)
        if result is not None:
            return Filtered(request, result, True)
        budget = self.settings.max_filter_cost
        if request.cost() > budget:
            raise InvalidParameter(f"{len(request.filters)} filters x {request.steps} steps x {request.size}^2 "
                                   f"pixels = {request.cost()} exceeds the budget of {budget} per request: ask for "
                                   "fewer filters, steps or a smaller size")
        with self.explanations.admitted() as ticket:
            return Filtered(request, await self.explanations.run(ticket, connection, model.filters, request), False)

    # --- video ---------------------------------------------------------------------------------------
    def video_limits(self) -> VideoLimits:
        settings = self.settings
        return VideoLimits(settings.max_video_seconds, settings.max_video_frames, settings.max_video_pixels,
                           settings.max_image_pixels)

    async def video(self, source: VideoSource, query: VideoQuery, smoothing_s: float,
                    connection: Connection | None = None, keep_frames: bool = False,
                    saliency: SaliencyQuery | None = None) -> AsyncIterator[VideoEvent]:
        """A video's sampled frames, in order, each with its faces followed into tracks: first the VideoInfo, then a
        TrackedFrame per sampled frame, then VideoDone with each track's summary.

        A reader task decodes frames one after another on worker threads, each frame holding a decode slot until its
        faces are cut out, while earlier frames are in detection and classification: a video's frames are detected
        in batches (with other videos' and photos' of the same size) and their faces classified with every other
        request's. At most VIDEO_WINDOW batches of frames are read ahead of the one the caller is given, so a slow
        reader of the answer holds a bounded number of frames. Each face's probabilities are the ones /predict
        gives it on that frame. Admitted before the upload is read (Busy beyond FER_MAX_VIDEOS_IN_FLIGHT); a client
        that disconnects stops the work (Cancelled); an error after the first frames comes after them.

        With `saliency`, each frame's faces also get a map of their predicted class, computed on the explanation
        pool under one admission for the whole video (Busy at once when it is full, as /saliency) and within one
        /saliency request's budget of forward passes over all its frames' faces."""
        model = self.served()
        if saliency is not None:
            self.check_saliency_query(saliency)
        with self.videos.admitted(), \
                (self.explanations.admitted() if saliency is not None else contextlib.nullcontext()) as ticket:
            started = time.perf_counter()
            filename, file = await source()
            reader = await run_in_threadpool(VideoReader, file, filename, query, self.video_limits())
            info = reader.info
            # A span the budget cannot afford at one face per sampled frame is refused before any frame is analysed,
            # not after minutes of them: stricter for a video with faceless frames, but early and certain.
            if saliency is not None and reader.declared_frames is not None:
                try:
                    check_saliency_cost(model, saliency.method, reader.declared_frames,
                                        self.settings.max_explanation_passes,
                                        counted=f"the {reader.declared_frames} frames sampled from this video (one "
                                        "face in each)", advice=VIDEO_SALIENCY_ADVICE)
                except InvalidParameter:
                    await run_in_threadpool(reader.close)
                    raise
            ahead = asyncio.Semaphore(VIDEO_WINDOW * self.settings.detect_batch_size)
            frames: asyncio.Queue = asyncio.Queue()  # of frame tasks, then None at the end or the reader's error
            decode_s = [0.0]
            producer = asyncio.ensure_future(self._read_frames(reader, info, ahead, frames, keep_frames, decode_s))
            try:
                yield info
                tracker, smoother, tracks, explained = FaceTracker(), Smoother(smoothing_s), {}, 0
                while (item := await frames.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    frame, photo, probabilities = await item
                    ahead.release()
                    if connection is not None and await connection.is_disconnected():
                        raise Cancelled("the client disconnected")
                    ids = tracker.update([face.box for face in photo.faces], frame.time)
                    smoothed = np.stack([smoother(track_id, frame.time, row) for track_id, row
                                         in zip(ids, probabilities)]) if ids else probabilities
                    for track_id, row, smooth in zip(ids, probabilities, smoothed):
                        tracks.setdefault(track_id, TrackTally()).add(frame.time, row, smooth)
                    maps = None
                    if saliency is not None and len(photo.crops):
                        explained += len(photo.crops)
                        check_saliency_cost(model, saliency.method, explained, self.settings.max_explanation_passes,
                                            advice=VIDEO_SALIENCY_ADVICE)
                        maps, _, _ = await self.explanations.run(
                            ticket, connection, model.saliency, photo.crops, saliency.method,
                            torch.from_numpy(probabilities.argmax(1)), saliency.layer)
                        maps = maps.numpy()
                    self.metrics.video_frames.labels("sampled").inc()
                    self._count("/video", 1, len(photo.faces))
                    yield TrackedFrame(frame, photo, ids, probabilities, smoothed, maps)
                self.metrics.video_frames.labels("decoded").inc(reader.decoded)
                self.metrics.video_seconds.inc(reader.sampled / info.sampled_fps)
                self.metrics.video_tracks.observe(len(tracks))
                yield VideoDone(reader.sampled, reader.decoded, tracks,
                                {"decode": round(decode_s[0] * 1000, 3),
                                 "total": round((time.perf_counter() - started) * 1000, 3)})
            finally:
                # shielded: a streaming answer's client that leaves cancels this generator's task, and every await
                # here would be cancelled again before the slots and the file were given back
                with anyio.CancelScope(shield=True):
                    producer.cancel()
                    await asyncio.gather(producer, return_exceptions=True)  # its thread, if reading, finishes first
                    pending = [item for item in iter_queue(frames) if isinstance(item, asyncio.Future)]
                    for task in pending:
                        task.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)  # each gives its decode slot back
                    await run_in_threadpool(reader.close)

    async def _read_frames(self, reader: VideoReader, info: VideoInfo, ahead: asyncio.Semaphore,
                           frames: asyncio.Queue, keep_frames: bool, decode_s: list[float]) -> None:
        """The reader task: each sampled frame decoded (within a decode slot) and sent on to detection and
        classification as a task, in order; then None, or the error that stopped the reading."""
        try:
            while True:
                await ahead.acquire()
                await self.decode_slots.acquire()
                try:
                    read = await run_in_threadpool(self._read_frame, reader, info)
                except BaseException:
                    self.decode_slots.release()
                    raise
                if read is None:
                    self.decode_slots.release()
                    break
                decode_s[0] += read[2]
                self.metrics.video_decode_time.observe(read[2])
                slot = HeldSlot(self.decode_slots)
                task = asyncio.ensure_future(self._video_frame(*read[:2], keep_frames, slot))
                task.add_done_callback(slot.release)  # also when cancelled before it started
                frames.put_nowait(task)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - the caller raises it after the frames read before it
            frames.put_nowait(error)
            return
        frames.put_nowait(None)

    def _read_frame(self, reader: VideoReader, info: VideoInfo):
        """The next sampled frame, made ready for the detector, and the seconds it took (on a worker thread)."""
        started = time.perf_counter()
        frame = reader.next_frame()
        if frame is None:
            return None
        pending = prepare(frame.image, info.filename, (info.width, info.height), self.model.face_options)
        return frame, pending, time.perf_counter() - started

    async def _video_frame(self, frame: SampledFrame, pending: Pending, keep_frames: bool, slot: HeldSlot):
        """One frame's faces found (with other frames' and photos'), cut out and classified; its decode slot given
        back once its faces are cut out."""
        try:
            photo = await self._detected(pending, keep_frames)
        finally:
            slot.release()
        return frame, photo, (await self._classified(photo.crops))[0]
