"""Videos read as a stream with PyAV (FFmpeg inside the wheel): frames decoded one at a time, sampled at a rate,
turned upright as the stream's display matrix says, and reduced to a bounded size; never the whole video in memory.

Every way a file can fail (not a video, cut short, audio only, a codec FFmpeg lacks, no frames in the span asked for,
a header declaring a size or rate beyond the limits, a stream running past its declared duration and the limit) is a
`VideoError` naming the problem, with the HTTP status to answer it with.
"""

import math
from dataclasses import dataclass
from typing import BinaryIO

import av
import numpy as np

from service.runtime.images import ImageError, excerpt

MAX_SOURCE_FPS = 240.0  # frames per second a stream may declare: each is decoded, sampled or not


class VideoError(ImageError):
    """A client's video cannot be used; `status` is the HTTP status to answer with."""


@dataclass(frozen=True)
class VideoQuery:
    fps: float = 5.0  # sampled frames per second; at most the source's (then every frame)
    start: float = 0.0  # seconds
    end: float | None = None  # seconds; None: to the end


@dataclass(frozen=True)
class VideoLimits:
    max_seconds: float  # of the span read, from `start`
    max_frames: int  # sampled frames
    max_frame_pixels: int  # frames are decoded reduced to at most this many pixels
    max_source_pixels: int  # a larger frame size in the header is refused


@dataclass
class VideoInfo:
    filename: str
    width: int  # upright frame size, as stored (before any reduction)
    height: int
    codec: str
    source_fps: float | None
    duration_s: float | None  # as the header declares it
    rotation: int  # degrees counter-clockwise that turn the stored frames upright (the display matrix's, as FFmpeg's
    # players apply it)
    sampled_fps: float
    start_s: float
    end_s: float | None


@dataclass
class VideoFrame:
    index: int  # among the sampled frames
    time: float  # seconds from the start of the video
    image: np.ndarray  # upright RGB, reduced to at most max_frame_pixels


class VideoReader:
    """One video's sampled frames, read in order by `next_frame()` (blocking: call it off the event loop)."""

    def __init__(self, file: BinaryIO, filename: str, query: VideoQuery, limits: VideoLimits):
        self.name = excerpt(filename)
        self.query, self.limits = query, limits
        try:
            self.container = av.open(file, mode="r", metadata_errors="ignore")
        except av.error.FFmpegError as error:
            raise VideoError(f"{self.name}: cannot be read as a video (not a video file, or cut short): "
                             f"{_reason(error)}", status=415) from None
        self.decoded = self.sampled = 0
        self._last_bucket = -1
        try:
            self.info = self._check_header()
            self._seek()
            self._frames = self.container.decode(self.stream)
            # the first frame is decoded now: a file that cannot be decoded fails before any answer has begun, and
            # frames carry the display matrix that says how to turn them upright
            self._peeked = self._decode()
            if self._peeked is None:
                raise VideoError(f"{self.name}: no video frame could be decoded", status=422)
        except BaseException:
            self.container.close()
            raise
        self.info.rotation = self._peeked.rotation % 360 // 90 * 90
        if self.info.rotation % 180:
            self.info.width, self.info.height = self.info.height, self.info.width

    def _check_header(self) -> VideoInfo:
        if not self.container.streams.video:
            kinds = sorted({stream.type for stream in self.container.streams})
            raise VideoError(f"{self.name}: has no video stream (streams: {', '.join(kinds) or 'none'})", status=422)
        self.stream = stream = self.container.streams.video[0]
        context = stream.codec_context
        if context is None or not av.codec.Codec(context.name, "r"):
            raise VideoError(f"{self.name}: its video codec cannot be decoded here", status=415)
        stream.thread_type = "AUTO"
        width, height = context.width, context.height
        if width * height > self.limits.max_source_pixels:
            raise VideoError(f"{self.name}: frames of {width}x{height} pixels exceed the limit of "
                             f"{self.limits.max_source_pixels} pixels per frame", status=413)
        rate = stream.average_rate or stream.guessed_rate
        source_fps = float(rate) if rate else None
        if source_fps is not None and source_fps > MAX_SOURCE_FPS:
            raise VideoError(f"{self.name}: declares {source_fps:g} frames per second; at most {MAX_SOURCE_FPS:g} "
                             "are read", status=422)
        duration = _declared_duration(self.container, stream)
        query, limits = self.query, self.limits
        if duration is not None and query.start >= duration:
            raise VideoError(f"{self.name}: start={query.start:g} s is past the video's end ({duration:.2f} s)",
                             status=422)
        end = min(query.end, duration) if query.end is not None and duration is not None else query.end or duration
        if end is not None and end - query.start > limits.max_seconds:
            raise VideoError(f"{self.name}: {end - query.start:.1f} s from start={query.start:g} exceed the limit of "
                             f"{limits.max_seconds:g} s per request: send `end` (or a shorter clip)", status=413)
        sampled_fps = min(query.fps, source_fps) if source_fps else query.fps
        if end is not None and (end - query.start) * sampled_fps > limits.max_frames + 1:
            raise VideoError(f"{self.name}: {end - query.start:.1f} s at {sampled_fps:g} frames/s is more than the "
                             f"limit of {limits.max_frames} frames per request: lower `fps` or send `end`", status=413)
        return VideoInfo(self.name, width, height, context.name, source_fps, duration, 0, sampled_fps,
                         query.start, query.end)

    def _seek(self) -> None:
        if self.query.start > 0 and self.stream.time_base:
            try:  # to the key frame before `start`; the frames before it are decoded and skipped
                self.container.seek(int(self.query.start / self.stream.time_base), stream=self.stream)
            except av.error.FFmpegError:
                pass  # a stream that cannot seek is read from its beginning

    def next_frame(self) -> VideoFrame | None:
        """The next sampled frame, or None at the end (of the stream or of the span asked for)."""
        query, limits = self.query, self.limits
        max_decoded = math.ceil(limits.max_seconds * MAX_SOURCE_FPS)
        while True:
            frame, self._peeked = (self._peeked, None) if self._peeked is not None else (self._decode(), None)
            if frame is None:
                if self.sampled == 0:
                    raise VideoError(f"{self.name}: no video frames between start={query.start:g} s and "
                                     f"{'the end' if query.end is None else f'end={query.end:g} s'}", status=422)
                return None
            self.decoded += 1
            if self.decoded > max_decoded:
                raise VideoError(f"{self.name}: more than {max_decoded} frames decoded for {limits.max_seconds:g} s: "
                                 "its timestamps do not advance", status=422)
            time = frame.time if frame.time is not None else (self.decoded - 1) / (self.info.source_fps or 25.0)
            if time < query.start - 1e-6:
                continue
            if query.end is not None and time >= query.end:
                return None
            if time - query.start > limits.max_seconds:
                declared = self.info.duration_s
                raise VideoError(f"{self.name}: runs past the limit of {limits.max_seconds:g} s per request"
                                 f"{f' (its header declared {declared:.1f} s)' if declared is not None else ''}: "
                                 "send `end`", status=413)
            bucket = math.floor((time - query.start) * self.info.sampled_fps + 1e-6)
            if bucket <= self._last_bucket:
                continue
            if self.sampled >= limits.max_frames:
                raise VideoError(f"{self.name}: more than the limit of {limits.max_frames} frames per request at "
                                 f"{self.info.sampled_fps:g} frames/s: lower `fps` or send `end`", status=413)
            self._last_bucket = bucket
            self.sampled += 1
            return VideoFrame(self.sampled - 1, float(time), self._upright(frame))

    def _decode(self) -> av.VideoFrame | None:
        try:
            return next(self._frames, None)
        except av.error.FFmpegError as error:
            raise VideoError(f"{self.name}: cannot be decoded after {self.decoded} frames (cut short or corrupt): "
                             f"{_reason(error)}", status=422) from None

    def _upright(self, frame: av.VideoFrame) -> np.ndarray:
        width, height = frame.width, frame.height
        ratio = min(1.0, math.sqrt(self.limits.max_frame_pixels / (width * height)))
        size = {"width": max(2, round(width * ratio)), "height": max(2, round(height * ratio))} if ratio < 1 else {}
        image = frame.to_ndarray(format="rgb24", **size)
        turns = round(self.info.rotation / 90) % 4
        return np.ascontiguousarray(np.rot90(image, turns)) if turns else image

    def close(self) -> None:
        self.container.close()


def _declared_duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / av.time_base if container.duration else None


def _reason(error: Exception) -> str:
    return excerpt(getattr(error, "strerror", None) or str(error), 160)
