"""Decoding uploaded images and drawing explanation images (heat maps, overlays, grids) as PNG."""

import base64
import binascii
import io
import math
from collections.abc import Callable

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

_HEAT = (matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


class ImageError(ValueError):
    """A client's image cannot be used; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# EPS is read by running Ghostscript on the client's file: not something to do with untrusted uploads.
UNSAFE_FORMATS = {"EPS"}
HIGH_BIT_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
NAME_EXCERPT = 80  # characters of a client's filename quoted back in messages


def excerpt(text: str, limit: int = NAME_EXCERPT) -> str:
    """A client's text, cut short enough to quote back in an error message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


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


def decode_image(data: bytes, filename: str, size: tuple[int, int], max_pixels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Any image Pillow reads, colour or grey, 8 or 16 bits, any size (first frame of animations): a uint8 grey
    array of `size` (height, width), and the upright image's (width, height). Failures are ImageErrors."""
    side = max(size)  # covers the target in either orientation
    image, original = open_upright(data, filename, max_pixels, "L", lambda width, height: (side, side))
    return np.asarray(image.resize((size[1], size[0]), Image.BILINEAR)), original


def decode_photo(data: bytes, filename: str, max_pixels: int, keep_pixels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """An upright RGB photo (EXIF rotation applied) reduced to at most `keep_pixels` pixels, and the upright
    image's full (width, height): what face detection and cropping work on."""
    def draft_size(width: int, height: int) -> tuple[int, int]:
        # JPEG's reduced scales are taken while at least half of `keep_pixels` remain: a 12 MP photo decodes at
        # 1/2 scale (3 MP) rather than in full. Detection works on a smaller copy still; faces are cropped from
        # this one, at 0.85x the side they would have had at `keep_pixels`.
        ratio = min(1.0, math.sqrt(keep_pixels / 2 / (width * height)))
        return math.ceil(width * ratio), math.ceil(height * ratio)

    image, original = open_upright(data, filename, max_pixels, "RGB", draft_size)
    return np.asarray(shrunk_to(image, keep_pixels)), original


def shrunk_to(image: Image.Image, pixels: int) -> Image.Image:
    """`image` scaled down, keeping its shape, to at most `pixels` pixels (unchanged when it has fewer)."""
    width, height = image.size
    if width * height <= pixels:
        return image
    ratio = math.sqrt(pixels / (width * height))
    return image.resize((max(1, int(width * ratio)), max(1, int(height * ratio))), Image.BILINEAR)


def pixels_declared(data: bytes) -> int | None:
    """Width x height as the image's header states it (read in microseconds, nothing decoded); None when no
    format this service reads recognises the data (decoding reports why)."""
    try:
        with Image.open(io.BytesIO(data), formats=_readable_formats()) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - the decode path turns the same failure into a clear ImageError
        return None
    return width * height


def open_upright(data: bytes, filename: str, max_pixels: int, mode: str,
                 draft_size: Callable[[int, int], tuple[int, int]]) -> tuple[Image.Image, tuple[int, int]]:
    """The decoded image in 8-bit `mode` (L or RGB), turned upright, decoded at reduced scale where the format
    allows it and `draft_size(width, height)` of the stored image is still covered; and the full upright
    (width, height). Every failure is an ImageError naming the file."""
    name = excerpt(filename)
    if not data:
        raise ImageError(f"{name}: empty file")
    try:
        with Image.open(io.BytesIO(data), formats=_readable_formats()) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"{name}: image is {width}x{height} pixels, more than the limit of "
                                 f"{max_pixels}", status=413)
            # JPEG decodes at 1/2, 1/4 or 1/8 scale when that still covers the draft size.
            image.draft(mode, draft_size(width, height))
            image.load()
            drafted = image.size
            upright = ImageOps.exif_transpose(image)
            if upright.size != drafted:  # turned by a quarter: the full size turns too
                width, height = height, width
            grey_first = mode == "L" or upright.mode in HIGH_BIT_DEPTH_MODES
            converted = (_to_grey(upright) if grey_first else upright).convert(mode)
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageError(f"{name}: rejected as a decompression bomb ({error})", status=413) from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can read") from None
    except MemoryError:
        raise ImageError(f"{name}: too large to decode", status=413) from None
    except Exception as error:  # noqa: BLE001 - decoders raise anything on hostile input (struct.error, ...)
        raise ImageError(f"{name}: cannot decode image ({type(error).__name__}: "
                         f"{excerpt(str(error), 200)})") from None
    return converted, (width, height)


def _readable_formats() -> list[str]:
    Image.init()
    return sorted(set(Image.OPEN) - UNSAFE_FORMATS)


def _to_grey(image: Image.Image) -> Image.Image:
    """8-bit grey; 16-bit and 32-bit images are scaled down to 8 bits (Pillow's own conversion clips them)."""
    if image.mode not in HIGH_BIT_DEPTH_MODES:
        return image.convert("L")
    values = np.asarray(image, dtype=np.float64)
    return Image.fromarray(_scale_to_8_bits(values, image.mode))


def _scale_to_8_bits(values: np.ndarray, mode: str) -> np.ndarray:
    """16-bit containers span 0-65535; 32-bit integer and float images span what their values span:
    0-1 (float), 0-255, 0-65535, or else their own minimum to maximum."""
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    elif low >= 0 and high <= 1 and mode == "F":
        low, high = 0.0, 1.0
    elif low >= 0 and high <= 255:
        low, high = 0.0, 255.0
    elif low >= 0 and high <= 65535:
        low, high = 0.0, 65535.0
    scaled = (values - low) * (255.0 / max(high - low, 1e-12))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


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


PHOTO_SIDE = (256, 1024)  # overlays are drawn on the photo scaled to fit this range (longer side)
BOX_COLOUR = (0, 255, 128)


def annotate(photo, maps_and_labels: list[tuple[np.ndarray, str]], alpha: float = 0.5) -> np.ndarray:
    """The photo (RGB) with each face's map blended inside its box, the box drawn and its label written."""
    upright = photo.upright if photo.upright.ndim == 3 else np.repeat(photo.upright[..., None], 3, axis=2)
    longer = max(upright.shape[:2])
    side = min(max(longer, PHOTO_SIDE[0]), PHOTO_SIDE[1])
    ratio = side / longer
    size = (max(1, round(upright.shape[1] * ratio)), max(1, round(upright.shape[0] * ratio)))
    canvas = np.asarray(Image.fromarray(upright).resize(size, Image.BILINEAR), dtype=np.float32)
    to_canvas = size[0] / photo.width  # upload pixels to canvas pixels
    boxes = []
    for face, (values, _) in zip(photo.faces, maps_and_labels):
        x0, y0 = round(face.box[0] * to_canvas), round(face.box[1] * to_canvas)
        w, h = max(1, round(face.box[2] * to_canvas)), max(1, round(face.box[3] * to_canvas))
        heat = heatmap(np.asarray(Image.fromarray(values.astype(np.float32)).resize((w, h), Image.BILINEAR)))
        top, left = max(0, y0), max(0, x0)  # boxes may reach past the image's edges
        bottom, right = min(size[1], y0 + h), min(size[0], x0 + w)
        if bottom > top and right > left:
            region = canvas[top:bottom, left:right]
            canvas[top:bottom, left:right] = region * (1 - alpha) + heat[top - y0:bottom - y0, left - x0:right - x0] * alpha
        boxes.append((x0, y0, x0 + w - 1, y0 + h - 1))
    drawn = Image.fromarray(canvas.astype(np.uint8))
    pen = ImageDraw.Draw(drawn)
    for box, (_, label) in zip(boxes, maps_and_labels):
        pen.rectangle(box, outline=BOX_COLOUR, width=max(1, side // 256))
        pen.text((box[0] + 3, max(0, box[1] - 12) if box[1] >= 12 else box[1] + 2), label, fill=BOX_COLOUR)
    if not boxes:
        pen.text((4, 4), photo.reason or "no face", fill=BOX_COLOUR)
    return np.asarray(drawn)


def side_by_side(images: list[np.ndarray], max_pixels: int, gap: int = 4) -> np.ndarray:
    """RGB images in a row at a common height, shrunk as a whole to stay within `max_pixels`."""
    height = min(image.shape[0] for image in images)
    resized = [np.asarray(Image.fromarray(image).resize((max(1, round(image.shape[1] * height / image.shape[0])),
                                                         height), Image.BILINEAR)) for image in images]
    row = np.full((height, sum(r.shape[1] for r in resized) + gap * (len(resized) - 1), 3), 255, dtype=np.uint8)
    left = 0
    for image in resized:
        row[:, left:left + image.shape[1]] = image
        left += image.shape[1] + gap
    if row.shape[0] * row.shape[1] > max_pixels:
        ratio = (max_pixels / (row.shape[0] * row.shape[1])) ** 0.5
        row = np.asarray(Image.fromarray(row).resize((max(1, int(row.shape[1] * ratio)), max(1, int(height * ratio))),
                                                     Image.BILINEAR))
    return row
