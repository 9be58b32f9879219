"""Decoding uploaded images and drawing explanation images (heat maps, overlays, grids) as PNG."""

import io

import matplotlib
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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


def decode_image(data: bytes, filename: str, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """Any image Pillow reads, colour or grey, 8 or 16 bits, any size (first frame of animations):
    a uint8 grey array of `size` (height, width). Every failure is an ImageError naming the file."""
    name = excerpt(filename)
    if not data:
        raise ImageError(f"{name}: empty file")
    try:
        with Image.open(io.BytesIO(data), formats=_readable_formats()) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"{name}: image is {width}x{height} pixels, more than the limit of "
                                 f"{max_pixels}", status=413)
            # JPEG decodes at 1/2, 1/4 or 1/8 scale when that still covers the target (either orientation).
            side = max(size)
            image.draft("L", (side, side))
            image.load()
            grey = _to_grey(ImageOps.exif_transpose(image)).resize((size[1], size[0]), Image.BILINEAR)
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
    return np.asarray(grey)


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


def overlay(grey: np.ndarray, values: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The heat map of `values` blended over the grey image (both resized to the larger of the two)."""
    side = max(grey.shape[0], values.shape[0])
    base = np.asarray(Image.fromarray(grey).resize((side, side), Image.BILINEAR), dtype=np.float32)
    heat = heatmap(np.asarray(Image.fromarray(values.astype(np.float32)).resize((side, side), Image.BILINEAR)))
    return (base[..., None] * (1 - alpha) + heat * alpha).astype(np.uint8)


def grid(tiles: list[np.ndarray], columns: int, scale: int = 1, gap: int = 2) -> np.ndarray:
    """Tiles of one shape (grey or RGB uint8) laid out row by row, enlarged `scale` times."""
    tiles = [np.kron(t, np.ones((scale, scale, 1) if t.ndim == 3 else (scale, scale), dtype=np.uint8))
             for t in tiles]
    height, width = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    columns = min(columns, len(tiles))
    canvas = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, *tiles[0].shape[2:]), 255,
                     dtype=np.uint8)
    for i, tile in enumerate(tiles):
        top, left = (i // columns) * (height + gap), (i % columns) * (width + gap)
        canvas[top:top + height, left:left + width] = tile
    return canvas
