"""Decoding images as both sides need them: any format Pillow reads (safe ones only), EXIF rotation applied, 16-bit
scans scaled to 8 bits, JPEGs decoded at reduced scale where that still covers the size asked for. The service
decodes uploads with it and training's image-folder loader reads its files with it."""

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


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


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the image's header states it (read in microseconds, nothing decoded); None when no
    format this service reads recognises the data (decoding reports why)."""
    try:
        with Image.open(io.BytesIO(data), formats=_readable_formats()) as image:
            return image.size
    except Exception:  # noqa: BLE001 - the decode path turns the same failure into a clear ImageError
        return None


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
