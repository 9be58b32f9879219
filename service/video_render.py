"""What /video draws: frames annotated with boxes, track ids and labels, encoded to MP4 with PyAV (H.264), and each
track's expressions over time as a timeline PNG (matplotlib)."""

import io
from fractions import Fraction
from typing import BinaryIO

import av
import matplotlib
import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from service.drawing import BOX_COLOUR, heatmap

# a colour per expression, the same in every timeline
CLASS_COLOURS = matplotlib.colormaps["tab10"].colors


def annotate_frame(image: np.ndarray, stored_width: int, faces: list[tuple[tuple[int, int, int, int], str]],
                   maps: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
    """The frame (RGB) with each face's box (in the stored frame's pixels) and its caption drawn, and its saliency
    map blended inside the box when there are `maps`."""
    scale = image.shape[1] / stored_width
    boxes = [(round(x * scale), round(y * scale), round((x + width) * scale) - 1, round((y + height) * scale) - 1)
             for (x, y, width, height), _ in faces]
    if maps is not None:
        image = image.astype(np.float32)
        for (left, top, right, bottom), values in zip(boxes, maps):
            width, height = right - left + 1, bottom - top + 1
            heat = heatmap(np.asarray(Image.fromarray(values.astype(np.float32)).resize((width, height),
                                                                                      Image.BILINEAR)))
            y0, x0 = max(0, top), max(0, left)  # boxes may reach past the frame's edges
            y1, x1 = min(image.shape[0], bottom + 1), min(image.shape[1], right + 1)
            if y1 > y0 and x1 > x0:
                region = image[y0:y1, x0:x1]
                image[y0:y1, x0:x1] = region * (1 - alpha) + heat[y0 - top:y1 - top, x0 - left:x1 - left] * alpha
        image = image.astype(np.uint8)
    drawn = Image.fromarray(image)
    pen = ImageDraw.Draw(drawn)
    line = max(1, round(max(image.shape[:2]) / 320))
    for box, (_, caption) in zip(boxes, faces):
        pen.rectangle(box, outline=BOX_COLOUR, width=line)
        pen.text((box[0] + 3, box[1] - 12 if box[1] >= 12 else box[1] + 2), caption, fill=BOX_COLOUR)
    return np.asarray(drawn)


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
