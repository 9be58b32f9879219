"""Videos read as a stream with PyAV (FFmpeg inside the wheel): frames decoded one at a time, sampled at a rate,
turned upright as the stream's display matrix says, and reduced to a bounded size; never the whole video in memory.

Every way a file can fail (not a video, cut short, audio only, a codec FFmpeg lacks, no frames in the span asked for,
a frame size or rate beyond the limits, a stream running past its declared duration and the limit) is a
`VideoError` naming the problem, with the HTTP status to answer it with.
"""

import math
from dataclasses import dataclass
from typing import BinaryIO

import av
import numpy as np

from schemas.api import VideoInfo
from service.runtime.images import ImageError, excerpt

MAX_SOURCE_FPS = 240.0  # frames per second a stream may declare: each is decoded, sampled or not


class VideoError(ImageError):
    """A client's video cannot be used; `status` is the HTTP status to answer with."""


@dataclass(frozen=True)
class VideoQuery:
    fps: float = 5.0  # sampled frames per second; at most the source's (then every frame)
    start: float = 0.0  # seconds from the video's first frame
    end: float | None = None  # seconds; None: to the end


@dataclass(frozen=True)
class VideoLimits:
    max_seconds: float  # of the span read, from `start`
    max_frames: int  # sampled frames
    max_frame_pixels: int  # frames are decoded reduced to at most this many pixels
    max_source_pixels: int  # a larger stored frame is refused


@dataclass
class SampledFrame:
    index: int  # among the sampled frames
    time: float  # seconds from the video's first frame
    image: np.ndarray  # upright RGB, reduced to at most max_frame_pixels


class VideoReader:
    """One video's sampled frames, read in order by `next_frame()` (blocking: call it off the event loop).

    Times count from the stream's first timestamp (an MPEG-TS clip's clock may start anywhere). A frame is sampled
    when it enters a new 1/fps interval from `start`, with half a source frame of slack so that millisecond or
    variable timestamps do not drop frames at the source's own rate."""

    def __init__(self, file: BinaryIO, filename: str, query: VideoQuery, limits: VideoLimits):
        self.name = excerpt(filename)
        self.query, self.limits = query, limits
        try:
            self.container = av.open(file, mode="r", metadata_errors="ignore")
        except av.error.FFmpegError as error:
            raise VideoError(f"{self.name}: cannot be read as a video (not a video file, or cut short): "
                             f"{_reason(error)}", status=415) from None
        self.decoded = self.sampled = self._seen = 0  # decoded from `start` on, sampled, and read in all
        self._last_bucket = -1
        try:
            self.info = self._check_header()
            self._seek()
            self._frames = self.container.decode(self.stream)
            # the first frame is decoded now: a file that cannot be decoded fails before any answer has begun, and
            # frames carry their size and the display matrix that says how to turn them upright
            self._peeked = self._decode()
            if self._peeked is None:
                raise VideoError(f"{self.name}: no video frame could be decoded", status=422)
            self._size = self._check_size(self._peeked.width, self._peeked.height)  # a header may say 0x0, or lie
        except BaseException:
            self.container.close()
            raise
        self.info.rotation = round(self._peeked.rotation / 90) % 4 * 90
        width, height = self._size
        self.info.width, self.info.height = (height, width) if self.info.rotation % 180 else (width, height)

    def _check_header(self) -> VideoInfo:
        if not self.container.streams.video:
            kinds = sorted({stream.type for stream in self.container.streams})
            raise VideoError(f"{self.name}: has no video stream (streams: {', '.join(kinds) or 'none'})", status=422)
        self.stream = stream = self.container.streams.video[0]
        context = stream.codec_context
        if context is None:
            raise VideoError(f"{self.name}: its video codec cannot be decoded here", status=415)
        stream.thread_type = "AUTO"
        self._check_size(context.width, context.height)  # before anything is decoded
        rate = stream.average_rate or stream.guessed_rate
        source_fps = float(rate) if rate else None
        if source_fps is not None and source_fps > MAX_SOURCE_FPS:
            raise VideoError(f"{self.name}: declares {source_fps:g} frames per second; at most {MAX_SOURCE_FPS:g} "
                             "are read", status=422)
        self.origin = float(stream.start_time * stream.time_base) if stream.start_time is not None \
            and stream.time_base else 0.0
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
        # the sampled frames the declared span holds (None when neither `end` nor the header bounds it)
        self.declared_frames = math.ceil((end - query.start) * sampled_fps - 1e-6) if end is not None else None
        if self.declared_frames is not None and self.declared_frames > limits.max_frames:
            raise VideoError(f"{self.name}: {end - query.start:.1f} s at {sampled_fps:g} frames/s is more than the "
                             f"limit of {limits.max_frames} frames per request: lower `fps` or send `end`", status=413)
        return VideoInfo(filename=self.name, width=context.width, height=context.height, codec=context.name,
                         source_fps=source_fps, duration_s=duration, rotation=0, sampled_fps=sampled_fps,
                         start_s=query.start, end_s=query.end)

    def _check_size(self, width: int, height: int) -> tuple[int, int]:
        """The stored frame size, refused (413) over the limit."""
        if width * height > self.limits.max_source_pixels:
            raise VideoError(f"{self.name}: frames of {width}x{height} pixels exceed the limit of "
                             f"{self.limits.max_source_pixels} pixels per frame", status=413)
        return width, height

    def _seek(self) -> None:
        if self.query.start > 0 and self.stream.time_base:
            try:  # to the key frame before `start`; the frames before it are decoded and skipped
                self.container.seek(int((self.query.start + self.origin) / self.stream.time_base), stream=self.stream)
            except (av.error.FFmpegError, OverflowError, ValueError):
                pass  # a stream that cannot seek is read from its beginning

    def next_frame(self) -> SampledFrame | None:
        """The next sampled frame, or None at the end (of the stream or of the span asked for)."""
        query, limits, info = self.query, self.limits, self.info
        max_decoded = math.ceil(limits.max_seconds * MAX_SOURCE_FPS)
        every_frame = info.source_fps is not None and query.fps >= info.source_fps
        slack = 0.5 * info.sampled_fps / info.source_fps if info.source_fps else 1e-6
        while True:
            frame, self._peeked = (self._peeked, None) if self._peeked is not None else (self._decode(), None)
            if frame is None or (query.end is not None and self._time(frame) >= query.end):
                if self.sampled == 0:
                    raise VideoError(f"{self.name}: no video frames between start={query.start:g} s and "
                                     f"{'the end' if query.end is None else f'end={query.end:g} s'}", status=422)
                return None
            time = self._time(frame)
            if time < query.start - 1e-6:
                continue
            self.decoded += 1  # from `start` on: the frames a seek could not skip are not held against the limit
            if self.decoded > max_decoded:
                raise VideoError(f"{self.name}: more than {max_decoded} frames decoded for {limits.max_seconds:g} s: "
                                 "its timestamps do not advance", status=422)
            if time - query.start > limits.max_seconds:
                declared = info.duration_s
                raise VideoError(f"{self.name}: runs past the limit of {limits.max_seconds:g} s per request"
                                 f"{f' (its header declared {declared:.1f} s)' if declared is not None else ''}: "
                                 "send `end`", status=413)
            if (frame.width, frame.height) != self._size:
                raise VideoError(f"{self.name}: its frame size changes from {self._size[0]}x{self._size[1]} to "
                                 f"{frame.width}x{frame.height} at {time:.2f} s, which is not supported", status=422)
            offset = max(0.0, time - query.start)
            bucket = self.decoded if every_frame else math.floor(offset * info.sampled_fps + slack)
            if bucket <= self._last_bucket:
                continue
            if self.sampled >= limits.max_frames:
                raise VideoError(f"{self.name}: more than the limit of {limits.max_frames} frames per request at "
                                 f"{info.sampled_fps:g} frames/s: lower `fps` or send `end`", status=413)
            self._last_bucket = bucket
            self.sampled += 1
            return SampledFrame(self.sampled - 1, float(time), self._upright(frame))

    def _time(self, frame: av.VideoFrame) -> float:
        if frame.time is not None:
            return frame.time - self.origin
        return (self._seen - 1) / (self.info.source_fps or 25.0)  # no timestamps: the declared rate

    def _decode(self) -> av.VideoFrame | None:
        try:
            frame = next(self._frames, None)
        except av.error.FFmpegError as error:
            raise VideoError(f"{self.name}: cannot be decoded after {self.decoded} frames (cut short or corrupt): "
                             f"{_reason(error)}", status=422) from None
        self._seen += frame is not None
        return frame

    def _upright(self, frame: av.VideoFrame) -> np.ndarray:
        width, height = frame.width, frame.height
        ratio = min(1.0, math.sqrt(self.limits.max_frame_pixels / (width * height)))
        size = {"width": max(2, round(width * ratio)), "height": max(2, round(height * ratio))} if ratio < 1 else {}
        image = frame.to_ndarray(format="rgb24", **size)
        turns = self.info.rotation // 90
        return np.ascontiguousarray(np.rot90(image, turns)) if turns else image

    def close(self) -> None:
        self.container.close()


def _declared_duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / av.time_base if container.duration else None


def _reason(error: Exception) -> str:
    return excerpt(getattr(error, "strerror", None) or str(error), 160)
