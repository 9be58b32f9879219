"""Explanation images drawn as PNG: heat maps, grids of tiles, overlays of maps on photos."""

import io
import math

import matplotlib
import numpy as np
from PIL import Image, ImageDraw

from service.runtime.images import ImageError

_HEAT = (matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def heatmap(values: np.ndarray) -> np.ndarray:
    """[0, 1] values to RGB uint8 through a perceptual colour map."""
    return _HEAT[np.clip(values * 255, 0, 255).astype(np.uint8)]


def grid_size(count: int, tile: tuple[int, int], columns: int, scale: int, max_pixels: int,
              gap: int = 2) -> tuple[int, int]:
    """(height, width) of a grid of `count` tiles; ImageError (422) when it is over `max_pixels`, so that a
    request can be refused before any work."""
    columns = min(columns, count)
    rows = -(-count // columns)
    height, width = rows * (tile[0] * scale + gap) - gap, columns * (tile[1] * scale + gap) - gap
    if height * width > max_pixels:
        raise ImageError(f"the image would be {width}x{height} pixels, more than the limit of {max_pixels}: "
                         "ask for a smaller scale, fewer columns or fewer tiles", status=422)
    return height, width


def grid(tiles: list[np.ndarray], columns: int, scale: int, max_pixels: int, gap: int = 2) -> np.ndarray:
    """Tiles of one shape (grey or RGB uint8) laid out row by row, enlarged `scale` times. Each tile is
    enlarged as it is pasted, so memory is the canvas alone."""
    height, width = tiles[0].shape[0] * scale, tiles[0].shape[1] * scale
    columns = min(columns, len(tiles))
    canvas = np.full((*grid_size(len(tiles), tiles[0].shape[:2], columns, scale, max_pixels, gap),
                      *tiles[0].shape[2:]), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        top, left = (i // columns) * (height + gap), (i % columns) * (width + gap)
        canvas[top:top + height, left:left + width] = tile.repeat(scale, 0).repeat(scale, 1)
    return canvas


MIN_SIDE = 256  # smaller photos (face crops) are drawn enlarged to this longer side, so that labels stay legible
BOX_COLOUR = (0, 255, 128)


OVERLAY_GAP = 4  # pixels between photos


def overlay_layout(photos, max_pixels: int, gap: int = OVERLAY_GAP) -> tuple[list[tuple[int, int]], int]:
    """The size (width, height) each photo is drawn at in an overlay, side by side at a common height, as large as
    the largest photo's own size allows within `max_pixels`; and the row's width, gaps included. ImageError (422)
    when even a row one pixel high is over it (photos of extreme shape), so that a request can be refused before
    any work."""
    def natural(photo) -> float:
        """Scale of the photo drawn on its own: its size, no larger than its decoded pixels hold (a face crop
        taken whole is decoded at the model's input size), and at least MIN_SIDE on the longer side."""
        longer = max(photo.width, photo.height)
        return max(min(1.0, max(photo.upright.shape[:2]) / longer), MIN_SIDE / longer)

    if not photos:
        raise ImageError("no photo to draw an overlay on (face crops sent as they are): ask for format=png or json",
                         status=422)
    tallest = max(photo.height * natural(photo) for photo in photos)
    # at height h the row is h * aspects + gaps wide: the tallest h (up to the tallest photo's) within max_pixels
    aspects, gaps = sum(photo.width / photo.height for photo in photos), gap * (len(photos) - 1)
    fitting = (-gaps + math.sqrt(gaps ** 2 + 4 * aspects * max_pixels)) / (2 * aspects)
    height = max(1, min(round(tallest), math.floor(fitting)))

    def sizes_at(height: int) -> tuple[list[tuple[int, int]], int]:
        sizes = [(max(1, math.floor(photo.width * height / photo.height)), height) for photo in photos]
        return sizes, sum(w for w, _ in sizes) + gaps

    sizes, width = sizes_at(height)
    while width * height > max_pixels and height > 1:  # widths of at least a pixel: lower the row until it fits
        height = max(1, min(height - 1, max_pixels // width))
        sizes, width = sizes_at(height)
    if width * height > max_pixels:
        raise ImageError(f"the overlay would be {width}x{height} pixels, more than the limit of {max_pixels}: the "
                         "photos are too wide for their height to be drawn side by side; send fewer photos or ask "
                         "for format=png or json", status=422)
    return sizes, width


def overlay(photos, maps_and_labels: list[list[tuple[np.ndarray, str]]], max_pixels: int,
            gap: int = OVERLAY_GAP) -> tuple[np.ndarray, list[int], list[float]]:
    """Each photo with its faces' maps, boxes and labels (`annotate`), laid out by `overlay_layout`; and where
    each photo lies in the picture: its left edge and its scale (picture pixels per photo pixel: a box (x, y, w, h)
    of photo i is drawn at (left_i + x * scale_i, y * scale_i)). Every photo is drawn once, straight at its final
    size."""
    sizes, width = overlay_layout(photos, max_pixels, gap)
    row = np.full((sizes[0][1], width, 3), 255, dtype=np.uint8)
    lefts, left = [], 0
    for photo, faces, size in zip(photos, maps_and_labels, sizes):
        row[:, left:left + size[0]] = annotate(photo, faces, size)
        lefts.append(left)
        left += size[0] + gap
    return row, lefts, [size[0] / photo.width for photo, size in zip(photos, sizes)]


def annotate(photo, maps_and_labels: list[tuple[np.ndarray, str]], size: tuple[int, int],
             alpha: float = 0.5) -> np.ndarray:
    """The photo (RGB) drawn at `size` (width, height) with each face's map blended inside its box, the box drawn
    and its label written."""
    upright = photo.upright if photo.upright.ndim == 3 else np.repeat(photo.upright[..., None], 3, axis=2)
    canvas = np.asarray(Image.fromarray(upright).resize(size, Image.BILINEAR), dtype=np.float32)
    to_canvas = size[0] / photo.width  # upload pixels to canvas pixels
    boxes = []
    for face, (values, _) in zip(photo.faces, maps_and_labels):
        box = (round(face.box[0] * to_canvas), round(face.box[1] * to_canvas),
               max(1, round(face.box[2] * to_canvas)), max(1, round(face.box[3] * to_canvas)))
        blend_map(canvas, values, box, alpha)
        boxes.append(box)
    captions = [label for _, label in maps_and_labels]
    return draw_boxes(canvas.astype(np.uint8), boxes, captions, max(1, max(size) // 256),
                      photo.reason or "no face")


def blend_map(canvas: np.ndarray, values: np.ndarray, box: tuple[int, int, int, int], alpha: float) -> None:
    """A map (any size, values in [0, 1]) drawn as a heat map into the float RGB `canvas` inside `box` (x, y,
    width, height in canvas pixels), `alpha` of it over the picture; a box may reach past the canvas's edges."""
    x0, y0, w, h = box
    heat = heatmap(np.asarray(Image.fromarray(values.astype(np.float32)).resize((w, h), Image.BILINEAR)))
    top, left = max(0, y0), max(0, x0)
    bottom, right = min(canvas.shape[0], y0 + h), min(canvas.shape[1], x0 + w)
    if bottom > top and right > left:
        region = canvas[top:bottom, left:right]
        canvas[top:bottom, left:right] = region * (1 - alpha) + heat[top - y0:bottom - y0, left - x0:right - x0] * alpha


def draw_boxes(image: np.ndarray, boxes: list[tuple[int, int, int, int]], captions: list[str], line: int,
               empty: str | None = None) -> np.ndarray:
    """The RGB image with each box (x, y, width, height) outlined and its caption written above it (inside it at
    the top edge); `empty` written in the corner when there is no box."""
    drawn = Image.fromarray(image)
    pen = ImageDraw.Draw(drawn)
    for (x, y, w, h), caption in zip(boxes, captions):
        pen.rectangle((x, y, x + w - 1, y + h - 1), outline=BOX_COLOUR, width=line)
        pen.text((x + 3, y - 12 if y >= 12 else y + 2), caption, fill=BOX_COLOUR)
    if not boxes and empty is not None:
        pen.text((4, 4), empty, fill=BOX_COLOUR)
    return np.asarray(drawn)
