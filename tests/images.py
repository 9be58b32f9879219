"""Test images: synthetic faces in the formats and shapes clients send."""

import io

import numpy as np
from PIL import Image

from training.synthetic import render_face


def face(expression: str = "happy", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return render_face(expression, np.random.default_rng(seed))


def encode(image: np.ndarray, fmt: str = "PNG", size: int | None = None, mode: str = "L") -> bytes:
    picture = Image.fromarray(image).convert(mode)
    if size:
        picture = picture.resize((size, size), Image.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    return buffer.getvalue()


def face_bytes(expression: str = "happy", seed: int = 0, fmt: str = "PNG", size: int | None = None,
               mode: str = "L") -> bytes:
    return encode(face(expression, seed)[0], fmt, size, mode)


def upload(*images: bytes, names=None) -> list:
    """Multipart `files` fields for httpx / TestClient."""
    return [("files", ((names or [f"{i}.png" for i in range(len(images))])[i], data, "application/octet-stream"))
            for i, data in enumerate(images)]
