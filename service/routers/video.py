"""POST /video: every face of a video followed over time, as JSON, streamed NDJSON, CSV, an annotated MP4 or a
timeline PNG. The data plane does the work (`DataPlane.video`); this module encodes its events."""

import contextlib
import csv
import io
import json
import logging
import os
import tempfile
from contextlib import AsyncExitStack

import anyio
import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from schemas.api import (
    Smoothing,
    TrackObservation,
    TrackSummary,
    VideoFace,
    VideoFormat,
    VideoFrameResult,
    VideoInfo,
    VideoResponse,
    VideoSummary,
    VideoTrack,
)
from service.dataplane import SaliencyQuery, TrackedFrame, VideoDone
from service.deps import Plane, ServedModel
from service.errors import known_error
from service.parameters import InvalidParameter
from service.routers.explain import MethodName
from service.routers.predict import ERRORS, face_fields
from service.uploads import read_video
from service.video import MAX_SOURCE_FPS, VideoQuery
from service.video_render import Mp4Writer, annotate_frame, timeline_png

logger = logging.getLogger("service")
router = APIRouter(tags=["video"])

VIDEO_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary"}}}},
            "video/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
MEDIA = {200: {"description": "JSON (format=json), or as `format` asks", "content": {
    "application/x-ndjson": {}, "text/csv": {}, "video/mp4": {}, "image/png": {}}}}
MAX_TIMELINE_TRACKS = 16
MAX_POSITION_S = 7 * 24 * 3600.0  # `start` and `end` beyond a week are no position in any video
FORMAT_DESCRIPTION = ("json: the whole result; ndjson: a line per event (video, each frame as it is done, summary; "
                      "an error after the first line is the last line); csv: a row per track and frame; mp4: the "
                      "sampled frames annotated; png: each track's smoothed expressions over time.")


@router.post("/video", response_model=VideoResponse, openapi_extra=VIDEO_BODY, responses={**ERRORS, **MEDIA})
async def video(request: Request, plane: Plane, model: ServedModel,
                format: VideoFormat = Query("json", description=FORMAT_DESCRIPTION),
                fps: float = Query(5.0, ge=0.05, le=MAX_SOURCE_FPS, description="Frames analysed per second, at "
                                                                                 "most the video's own (then every "
                                                                                 "frame)."),
                start: float = Query(0.0, ge=0, le=MAX_POSITION_S, description="Seconds from the video's start."),
                end: float | None = Query(None, gt=0, le=MAX_POSITION_S,
                                          description="Seconds from the video's start; default: its end."),
                smoothing: float | None = Query(None, ge=0, le=60, description=(
                    "Time constant (s) of each track's exponential moving average; default FER_VIDEO_SMOOTHING_S; "
                    "0: none.")),
                track: int | None = Query(None, ge=1, description="format=png: that track's timeline only."),
                saliency: MethodName | None = Query(None, description=(
                    "A saliency map of each face's predicted class on every sampled frame (json and ndjson: per "
                    "face; mp4: drawn in the boxes), within one /saliency request's budget over the whole video.")),
                layer: str | None = Query(None, description="Grad-CAM's layer, with saliency=gradcam.")):
    """Faces of a video (multipart `file`, or the raw body as video/*) detected on frames sampled at `fps`, linked
    into tracks, each face's expression probabilities per frame (as /predict gives them on that frame) and smoothed
    over its track, with a summary per track."""
    if end is not None and end <= start:
        raise InvalidParameter(f"query parameter `end`: {end:g} s is not after start={start:g} s")
    if track is not None and format != "png":
        raise InvalidParameter("query parameter `track` applies to format=png only")
    if saliency is not None and format in ("csv", "png"):
        raise InvalidParameter(f"query parameter `saliency` applies to json, ndjson and mp4, not {format}")
    if layer is not None and saliency is None:
        raise InvalidParameter("query parameter `layer` applies with `saliency` only")
    closing = AsyncExitStack()
    smoothing_s = plane.settings.video_smoothing_s if smoothing is None else smoothing
    events = plane.video(lambda: read_video(request, closing), VideoQuery(fps, start, end), smoothing_s,
                         connection=request, keep_frames=format == "mp4",
                         saliency=SaliencyQuery(saliency, None, layer) if saliency is not None else None)
    try:
        info: VideoInfo = await anext(events)  # what fails before anything is sent fails with its status
    except BaseException:
        await _close(events, closing)
        raise
    head = {"model": model.info(), "video": info, "smoothing": Smoothing(time_constant_s=smoothing_s)}
    if format == "ndjson":
        return ClosingStream(_ndjson(events, head, model.classes), lambda: _close(events, closing),
                             media_type="application/x-ndjson")
    try:
        if format == "mp4":
            return await _mp4(events, info, model.classes)
        collected = await _collect(events, model.classes)
    finally:
        await _close(events, closing)
    if format == "csv":
        return Response(_csv(collected.frames, model.classes), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="video.csv"'})
    if format == "png":
        return Response(await run_in_threadpool(_timelines, collected, track, model.classes), media_type="image/png")
    return VideoResponse(**head, frames=collected.frames, tracks=collected.tracks(), summary=collected.summary)


def _face(face, track_id: int, probabilities: np.ndarray, smoothed: np.ndarray, saliency: np.ndarray | None,
          classes: list[str]) -> VideoFace:
    raw, smooth = probabilities.tolist(), smoothed.tolist()
    index = int(np.argmax(probabilities))
    return VideoFace(**face_fields(face), track_id=track_id, label=classes[index], confidence=raw[index],
                     probabilities=dict(zip(classes, raw)), smoothed=dict(zip(classes, smooth)),
                     smoothed_label=classes[int(np.argmax(smoothed))],
                     saliency=saliency.round(4).tolist() if saliency is not None else None)


def _frame(tracked: TrackedFrame, classes: list[str]) -> VideoFrameResult:
    maps = tracked.maps if tracked.maps is not None else [None] * len(tracked.track_ids)
    faces = [_face(*item, classes) for item in zip(tracked.photo.faces, tracked.track_ids, tracked.probabilities,
                                                     tracked.smoothed, maps)]
    return VideoFrameResult(index=tracked.frame.index, time_s=round(tracked.frame.time, 4), faces=faces,
                            faces_truncated=tracked.photo.truncated)


def _summary(done: VideoDone, classes: list[str]) -> VideoSummary:
    tracks = [TrackSummary(id=track_id, frames=tally.frames, first_s=round(tally.first_time, 4),
                           last_s=round(tally.last_time, 4), dominant=classes[int(np.argmax(tally.share()))],
                           share=dict(zip(classes, tally.share().round(4).tolist())),
                           mean_probabilities=dict(zip(classes, tally.mean().round(6).tolist())))
              for track_id, tally in sorted(done.tracks.items())]
    counts = sum((tally.label_counts for tally in done.tracks.values()), np.zeros(len(classes), dtype=np.int64))
    return VideoSummary(frames_sampled=done.frames_sampled, frames_decoded=done.frames_decoded, tracks=tracks,
                        dominant=classes[int(np.argmax(counts))] if counts.sum() else None, timing_ms=done.timing_ms)


class ClosingStream(StreamingResponse):
    """A streamed answer whose work and upload are released however it ends: finished, failed, or its client gone
    (even before its first line, when Starlette never starts, and never closes, the body's iterator)."""

    def __init__(self, content, release, **kwargs):
        super().__init__(content, **kwargs)
        self.release = release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()
                await self.release()


async def _ndjson(events, head: dict, classes: list[str]):
    def line(event: str, body) -> bytes:
        fields = body.model_dump(mode="json") if hasattr(body, "model_dump") else body
        return (json.dumps({"event": event, **fields}, separators=(",", ":")) + "\n").encode()

    try:
        yield line("video", {key: value.model_dump(mode="json") for key, value in head.items()})
        async for event in events:
            if isinstance(event, TrackedFrame):
                yield line("frame", _frame(event, classes))
            elif isinstance(event, VideoDone):
                yield line("summary", _summary(event, classes))
    except Exception as error:  # the status is sent: the answer's last line says what went wrong
        known = known_error(error)
        if known is None:
            logger.exception("video analysis failed")
        status, message, _ = known or (500, "internal error while analysing the video", None)
        yield line("error", {"status": status, "detail": message})


async def _close(events, closing: AsyncExitStack) -> None:
    """The plane's work stopped and the upload's file closed, even when a client that left cancels the answer."""
    with anyio.CancelScope(shield=True):
        await events.aclose()
        await closing.aclose()


class Collected:
    def __init__(self):
        self.frames: list[VideoFrameResult] = []
        self.observations: dict[int, list[TrackObservation]] = {}
        self.summary: VideoSummary | None = None

    def add(self, frame: VideoFrameResult) -> None:
        for face in frame.faces:
            self.observations.setdefault(face.track_id, []).append(TrackObservation(
                frame=frame.index, time_s=frame.time_s, box=face.box, probabilities=face.probabilities,
                smoothed=face.smoothed))
        self.frames.append(frame)

    def tracks(self) -> list[VideoTrack]:
        return [VideoTrack(**summary.model_dump(), observations=self.observations[summary.id])
                for summary in self.summary.tracks]


async def _collect(events, classes: list[str]) -> Collected:
    collected = Collected()
    async for event in events:
        if isinstance(event, TrackedFrame):
            collected.add(_frame(event, classes))
        elif isinstance(event, VideoDone):
            collected.summary = _summary(event, classes)
    return collected


def _csv(frames: list[VideoFrameResult], classes: list[str]) -> str:
    """A row per track and frame, as `fer`'s Video writes one per frame: box, raw probabilities, smoothed ones."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["frame", "time_s", "track_id", "x", "y", "width", "height", "detection_score", "label",
                     *classes, "smoothed_label", *(f"smoothed_{name}" for name in classes)])
    for frame in frames:
        for face in frame.faces:
            box = face.box
            writer.writerow([frame.index, frame.time_s, face.track_id, box.x, box.y, box.width, box.height,
                             face.detection_score, face.label, *(round(face.probabilities[c], 6) for c in classes),
                             face.smoothed_label, *(round(face.smoothed[c], 6) for c in classes)])
    return out.getvalue()


def _timelines(collected: Collected, track: int | None, classes: list[str]) -> bytes:
    observations = collected.observations
    if track is not None and track not in observations:
        raise InvalidParameter(f"query parameter `track`: no track {track} in this video (tracks: "
                               f"{', '.join(map(str, sorted(observations))) or 'none'})")
    chosen = [track] if track is not None else sorted(observations)
    if len(chosen) > MAX_TIMELINE_TRACKS:
        raise InvalidParameter(f"{len(chosen)} tracks are more than {MAX_TIMELINE_TRACKS} timelines in one picture: "
                               "ask for one with `track`")
    if not chosen:
        raise InvalidParameter("no face was found in the sampled frames: there is no timeline to draw")
    series = [(track_id, np.array([o.time_s for o in observations[track_id]]),
               np.array([[o.smoothed[c] for c in classes] for o in observations[track_id]]))
              for track_id in chosen]
    duration = collected.frames[-1].time_s if collected.frames else 0.0
    return timeline_png(series, classes, duration)


async def _mp4(events, info: VideoInfo, classes: list[str]) -> FileResponse:
    """The sampled frames annotated and encoded, in a temporary file sent and then deleted."""
    output = tempfile.NamedTemporaryFile(suffix=".mp4", delete=False)
    writer = None
    try:
        async for event in events:
            if not isinstance(event, TrackedFrame):
                continue
            captions = [(face.box, f"#{track_id} {classes[int(np.argmax(smooth))]} {smooth.max():.2f}")
                        for face, track_id, smooth in zip(event.photo.faces, event.track_ids, event.smoothed)]
            image, maps = event.photo.upright, event.maps
            if writer is None:
                writer = Mp4Writer(output, info.sampled_fps, image.shape[1], image.shape[0])
            await run_in_threadpool(lambda: writer.write(annotate_frame(image, info.width, captions, maps),
                                                         event.frame.time))
        await run_in_threadpool(writer.close)  # a video yields a frame or an error, so there is a writer
        output.close()
    except BaseException:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.container.close()
        output.close()
        os.unlink(output.name)
        raise
    return FileResponse(output.name, media_type="video/mp4", filename="annotated.mp4",
                        background=BackgroundTask(os.unlink, output.name))
