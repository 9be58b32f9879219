"""What /video draws: frames annotated with boxes, track ids and labels, encoded to MP4 with PyAV (H.264), and each
track's expressions over time as a timeline PNG (matplotlib)."""

import io
from fractions import Fraction
from typing import BinaryIO

import av
import matplotlib
import numpy as np
from matplotlib.figure import Figure

from service.drawing import blend_map, draw_boxes

# a colour per expression, the same in every timeline
CLASS_COLOURS = matplotlib.colormaps["tab10"].colors


def annotate_frame(image: np.ndarray, stored_width: int, faces: list[tuple[tuple[int, int, int, int], str]],
                   maps: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
    """The frame (RGB) with each face's box (in the stored frame's pixels) and its caption drawn, and its saliency
    map blended inside the box when there are `maps`."""
    scale = image.shape[1] / stored_width
    boxes = []
    for (x, y, width, height), _ in faces:
        left, top = round(x * scale), round(y * scale)
        boxes.append((left, top, round((x + width) * scale) - left, round((y + height) * scale) - top))
    if maps is not None:
        canvas = image.astype(np.float32)
        for box, values in zip(boxes, maps):
            blend_map(canvas, values, box, alpha)
        image = canvas.astype(np.uint8)
    return draw_boxes(image, boxes, [caption for _, caption in faces], max(1, round(max(image.shape[:2]) / 320)))


class Mp4Writer:
    """Frames (RGB, one size) appended at their times, encoded H.264 (yuv420p, so sides are cut to even) into
    `file`; `close()` finishes the file."""

    def __init__(self, file: BinaryIO, fps: float, width: int, height: int):
        self.container = av.open(file, "w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        self.width, self.height = max(2, width - width % 2), max(2, height - height % 2)
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"
        self.stream.options = {"preset": "veryfast", "crf": "23"}
        self.stream.codec_context.time_base = Fraction(1, 1000)
        self.last_pts = -1

    def write(self, image: np.ndarray, time: float) -> None:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:self.height, :self.width]), format="rgb24")
        frame.pts = self.last_pts = max(self.last_pts + 1, round(time * 1000))
        frame.time_base = Fraction(1, 1000)
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))
        self.container.close()


def timeline_png(tracks: list[tuple[int, np.ndarray, np.ndarray]], classes: list[str], duration: float) -> bytes:
    """One panel per track: its smoothed probabilities (stacked, a colour per class) against time.
    `tracks`: (id, times, smoothed probabilities frames x classes)."""
    figure = Figure(figsize=(8, 1.2 + 1.4 * len(tracks)), dpi=100, layout="constrained")
    axes = figure.subplots(len(tracks), 1, squeeze=False, sharex=True)[:, 0]
    for axis, (track_id, times, smoothed) in zip(axes, tracks):
        if len(times) > 1:
            axis.stackplot(times, smoothed.T, colors=CLASS_COLOURS[:len(classes)], labels=classes, step="post")
        else:  # one frame: a bar as wide as a sampled frame's share of the timeline
            bottom = 0.0
            for value, colour in zip(smoothed[0], CLASS_COLOURS):
                axis.bar(times[0], value, width=max(duration, 1) / 50, bottom=bottom, color=colour, align="edge")
                bottom += value
        axis.set_ylim(0, 1)
        axis.set_xlim(0, max(duration, float(times[-1]) if len(times) else 0, 1e-3))
        axis.set_ylabel(f"track {track_id}")
    axes[-1].set_xlabel("time (s)")
    handles = [matplotlib.patches.Patch(color=colour, label=name) for name, colour in zip(classes, CLASS_COLOURS)]
    figure.legend(handles=handles, loc="outside upper center", ncols=len(classes), fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
