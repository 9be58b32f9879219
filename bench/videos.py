"""Clips for the tests and benchmarks, encoded with PyAV (no downloads): people's heads from the photographs that
registry packages ship (bench.photos' portraits) moving over a background, with known tracks. Each actor is a head
and a path: where its box is at time t, or None while it is off screen. (MTCNN finds no face in the procedural
faces of training.synthetic pasted whole, so the clips use real ones.)"""

import io
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from bench.photos import PORTRAITS, _rgb

Box = tuple[int, int, int, int]  # x, y, width, height


@dataclass
class Actor:
    head: Image.Image  # RGB, square: the face's drawn box grown 1.8x, as bench.photos.group_photo cuts it
    path: Callable[[float], Box | None]  # where the head is drawn


def head(name: str) -> Image.Image:
    portrait = next(photo for photo in PORTRAITS if photo.name == name)
    x, y, w, h = portrait.faces[0]
    cx, cy, side = x + w / 2, y + h / 2, max(w, h) * 1.8
    return Image.fromarray(_rgb(portrait.load())).crop(
        (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2)))


def frames(actors: list[Actor], seconds: float, fps: float, height: int = 480, width: int = 640):
    """(time, RGB frame, boxes per actor) for each frame; later actors are drawn over earlier ones."""
    y, x = np.mgrid[0:height, 0:width]
    backdrop = np.stack([90 + 60 * x / width, 110 + 40 * y / height, np.full((height, width), 140.0)], axis=2)
    backdrop = backdrop.astype(np.uint8)
    for index in range(round(seconds * fps)):
        time = index / fps
        canvas = backdrop.copy()
        boxes = []
        for actor in actors:
            box = actor.path(time)
            boxes.append(box)
            if box is not None:
                x, y, w, h = box
                canvas[y:y + h, x:x + w] = np.asarray(actor.head.resize((w, h), Image.BILINEAR))
        yield time, canvas.astype(np.uint8), boxes


def encode(actors: list[Actor], seconds: float, fps: float = 10, height: int = 480, width: int = 640,
           container: str = "mp4", codec: str = "libx264", rotation: int | None = None) -> bytes:
    """The clip encoded (H.264 in MP4 by default, nearly lossless so that detection sees the faces drawn). With a
    `rotation`, as a phone stores a clip filmed turned: frames stored turned the other way, and the display matrix
    saying to turn them `rotation` degrees counter-clockwise to show them upright."""
    turns = (rotation or 0) // 90 % 4
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = output.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = (height, width) if turns % 2 else (width, height)
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "12", "preset": "ultrafast"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for _, image, _ in frames(actors, seconds, fps, height, width):
            stored = np.ascontiguousarray(np.rot90(image, -turns))
            output.mux(stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")))
        output.mux(stream.encode(None))
    return buffer.getvalue()


def linear(start: tuple[float, float], end: tuple[float, float], side: int, seconds: float,
           visible: tuple[float, float] = (0.0, float("inf"))) -> Callable[[float], Box | None]:
    """A face of `side` px moving from `start` to `end` (top-left corners) over `seconds`, shown within `visible`."""
    def path(time: float) -> Box | None:
        if not visible[0] <= time < visible[1]:
            return None
        share = min(1.0, time / seconds)
        return (round(start[0] + (end[0] - start[0]) * share), round(start[1] + (end[1] - start[1]) * share),
                side, side)
    return path


def two_faces(seconds: float = 2.0) -> list[Actor]:
    """Two faces drifting apart, visible throughout."""
    return [Actor(head("astronaut"), linear((30, 120), (130, 140), 200, seconds)),
            Actor(head("grace_hopper"), linear((410, 130), (350, 100), 200, seconds))]


def crossing(seconds: float = 3.0) -> list[Actor]:
    """Two faces passing each other: the second, drawn on top, hides the first for a few frames midway."""
    return [Actor(head("astronaut"), linear((20, 150), (420, 170), 200, seconds)),
            Actor(head("grace_hopper"), linear((420, 110), (20, 130), 200, seconds))]


def comings_and_goings(seconds: float = 3.0) -> list[Actor]:
    """No face for the first half second, one that stays, one that leaves at 1.5 s, one that arrives at 2 s."""
    return [Actor(head("astronaut"), linear((20, 20), (60, 40), 180, seconds, (0.5, 99))),
            Actor(head("grace_hopper"), linear((440, 20), (420, 50), 180, seconds, (0.5, 1.5))),
            Actor(head("camera"), linear((230, 280), (200, 290), 180, seconds, (2.0, 99)))]




def group(faces: int, seconds: float) -> list[Actor]:
    """1-4 people in the corners of a 640x480 frame (as bench.photos.group_photo places them), each drifting."""
    corners = [(20, 20), (410, 20), (20, 250), (410, 250)]
    names = ["astronaut", "grace_hopper", "camera", "astronaut"]
    return [Actor(head(name), linear((x, y), (x + 10, y + 10), 200, seconds))
            for (x, y), name in zip(corners[:faces], names)]
