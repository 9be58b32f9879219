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


def decode_image(data: bytes, filename: str, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """Any image Pillow reads, colour or grey, any size: a uint8 grey array of `size` (height, width)."""
    if not data:
        raise ImageError(f"{filename}: empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"{filename}: image is {width}x{height} pixels, more than the limit of "
                                 f"{max_pixels}", status=413)
            image.load()
            grey = ImageOps.exif_transpose(image).convert("L")
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageError(f"{filename}: rejected as a decompression bomb ({error})", status=413) from None
    except UnidentifiedImageError:
        raise ImageError(f"{filename}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError) as error:  # truncated or malformed files
        raise ImageError(f"{filename}: cannot decode image ({error})") from None
    return np.asarray(grey.resize((size[1], size[0]), Image.BILINEAR))


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
