"""Deterministic procedural faces: the embedded data set that needs no download.

Each image is a 48x48 grayscale face whose expression shows in the mouth, the eyes and the eyebrows,
the way FER2013's classes differ; position, scale, brightness, contrast and noise vary at random, so a
model has to learn the shapes, not the pixels.
"""

import numpy as np
from PIL import Image, ImageDraw

from schemas.labels import CLASSES

SIZE = 48
_SUPERSAMPLE = 4  # draw at 192x192 and shrink, so thin strokes survive as grey levels

# Per expression: eyebrow inner/outer heights (negative is up), eye half-height, mouth shape.
_BROWS = {  # (inner_dy, outer_dy)
    "angry": (4, -3), "disgust": (3, 2), "fear": (-5, -1), "happy": (-1, -1),
    "sad": (-4, 3), "surprise": (-7, -7), "neutral": (0, 0),
}
_EYE_OPEN = {"angry": 1.4, "disgust": 1.0, "fear": 4.0, "happy": 0.8, "sad": 2.0, "surprise": 4.5, "neutral": 2.4}


def _draw_mouth(draw: ImageDraw.ImageDraw, expression: str, cx: float, cy: float, s: float, ink: int) -> None:
    w = 9 * s
    if expression == "happy":  # smile: lower half of an ellipse
        draw.arc([cx - w, cy - 6 * s, cx + w, cy + 5 * s], 10, 170, fill=ink, width=int(2.4 * s))
    elif expression == "sad":  # frown: upper half
        draw.arc([cx - w, cy, cx + w, cy + 10 * s], 200, 340, fill=ink, width=int(2.4 * s))
    elif expression == "surprise":  # round open mouth
        draw.ellipse([cx - 4 * s, cy - 4 * s, cx + 4 * s, cy + 6 * s], fill=ink)
    elif expression == "fear":  # wide, open, flat mouth
        draw.ellipse([cx - w, cy - 2 * s, cx + w, cy + 4 * s], fill=ink)
    elif expression == "angry":  # tight thick line, corners down
        draw.line([cx - w * 0.8, cy + 2 * s, cx - w * 0.5, cy, cx + w * 0.5, cy, cx + w * 0.8, cy + 2 * s],
                  fill=ink, width=int(3.2 * s))
    elif expression == "disgust":  # asymmetric sneer
        draw.line([cx - w, cy + 2 * s, cx, cy, cx + w * 0.4, cy - 1 * s, cx + w, cy - 4 * s],
                  fill=ink, width=int(2.4 * s))
    else:  # neutral: thin straight line
        draw.line([cx - w * 0.8, cy, cx + w * 0.8, cy], fill=ink, width=int(1.6 * s))


def render_face(expression: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One face as a uint8 48x48 array, and the boolean mask of its eyes, eyebrows and mouth."""
    k = _SUPERSAMPLE
    background = int(rng.integers(20, 236))
    skin = int(np.clip(background + rng.choice([-1, 1]) * rng.integers(40, 110), 30, 225))
    ink = int(np.clip(skin - rng.integers(70, 140), 0, 255)) if skin > 110 else int(skin + rng.integers(70, 120))
    image = Image.new("L", (SIZE * k, SIZE * k), background)
    features = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(image)

    s = rng.uniform(0.85, 1.15) * k
    cx = (SIZE / 2 + rng.uniform(-4, 4)) * k
    cy = (SIZE / 2 + rng.uniform(-3, 3)) * k
    draw.ellipse([cx - 17 * s, cy - 21 * s, cx + 17 * s, cy + 21 * s], fill=skin)
    eye_open = _EYE_OPEN[expression] * rng.uniform(0.85, 1.15)
    for canvas, colour in ((draw, ink), (ImageDraw.Draw(features), 255)):
        _draw_features(canvas, expression, cx, cy, s, eye_open, colour)

    face = np.asarray(image.resize((SIZE, SIZE), Image.BILINEAR, reducing_gap=None), dtype=np.float32)
    contrast = rng.uniform(0.7, 1.2)
    face = (face - face.mean()) * contrast + face.mean() + rng.normal(0, rng.uniform(3, 12), face.shape)
    mask = np.asarray(features.resize((SIZE, SIZE), Image.BILINEAR, reducing_gap=None)) > 0
    return np.clip(face, 0, 255).astype(np.uint8), mask


def _draw_features(draw: ImageDraw.ImageDraw, expression: str, cx: float, cy: float, s: float, eye_open: float,
                   ink: int) -> None:
    eye_y = cy - 5 * s
    inner_dy, outer_dy = _BROWS[expression]
    for side in (-1, 1):
        ex = cx + side * 7 * s
        draw.ellipse([ex - 3.2 * s, eye_y - eye_open * s, ex + 3.2 * s, eye_y + eye_open * s], fill=ink)
        brow_y = eye_y - 6 * s
        draw.line([ex - side * 1.5 * s, brow_y + inner_dy * s, ex + side * 5 * s, brow_y + outer_dy * s],
                  fill=ink, width=int(1.8 * s))
    _draw_mouth(draw, expression, cx, cy + 10 * s, s, ink)


def generate(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` faces with balanced labels in canonical order, as (uint8 N x 48 x 48, int64 N)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count, dtype=np.int64) % len(CLASSES)
    rng.shuffle(labels)
    images = np.stack([render_face(CLASSES[label], rng)[0] for label in labels]) if count else np.empty((0, SIZE, SIZE))
    return images.astype(np.uint8), labels
