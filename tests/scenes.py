"""Composite scenes for face detection: faces pasted at known places onto larger backgrounds.

Deterministic for a seed, no download. Faces are 48x48 grey crops, either the project's procedural faces
(`training.synthetic`) or real FER2013 validation faces where `../shared/data/fer2013/val` exists; each is
scaled to 48-160 px, turned by up to +-10 degrees and pasted where it overlaps no other face, 0 to 6 per
scene, onto noise, a colour gradient or a texture. The ground truth is each face's upright square box in
scene coordinates (the pasted crop before rotation), its source crop and its label.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from schemas.labels import CLASSES
from training.synthetic import render_face

FER2013_VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013" / "val"
MIN_SIDE, MAX_SIDE = 48, 160
MAX_ANGLE = 10.0
MAX_FACES = 6


@dataclass
class SceneFace:
    box: tuple[int, int, int, int]  # x, y, width, height of the face before rotation
    crop: np.ndarray  # the 48x48 uint8 source face
    label: int
    angle: float  # degrees, counter-clockwise


@dataclass
class Scene:
    image: np.ndarray  # H x W x 3 uint8
    faces: list[SceneFace]


class FaceSource:
    """Crops and labels to draw faces from."""

    def __init__(self, crops: np.ndarray, labels: np.ndarray, name: str):
        self.crops, self.labels, self.name = crops, labels, name

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        index = int(rng.integers(len(self.crops)))
        return self.crops[index], int(self.labels[index])


def synthetic_source(count: int = 700, seed: int = 1234) -> FaceSource:
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % len(CLASSES)
    crops = np.stack([render_face(CLASSES[label], rng)[0] for label in labels])
    return FaceSource(crops, labels, "synthetic")


def fer2013_source(root: Path = FER2013_VAL) -> FaceSource:
    """Every validation face, in a fixed order (sorted paths), so that scenes do not depend on the file system."""
    files = sorted((path, CLASSES.index(path.parent.name)) for path in root.glob("*/*.jpg"))
    if not files:
        raise FileNotFoundError(f"no FER2013 faces under {root}")
    crops = np.stack([np.asarray(Image.open(path).convert("L").resize((48, 48))) for path, _ in files])
    return FaceSource(crops, np.array([label for _, label in files]), "fer2013")


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Noise, a colour gradient or a texture (blurred noise over stripes), as H x W x 3 float."""
    kind = rng.integers(3)
    if kind == 0:
        base = rng.uniform(40, 215, 3) + rng.normal(0, rng.uniform(5, 40), (height, width, 3))
    elif kind == 1:
        y, x = np.mgrid[0:height, 0:width] / max(height, width)
        start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (x * np.cos(rng.uniform(0, np.pi)) + y * np.sin(rng.uniform(0, np.pi)))[..., None]
        base = start + (end - start) * (t - t.min()) / max(np.ptp(t), 1e-6) + rng.normal(0, 4, (height, width, 3))
    else:
        coarse = rng.uniform(0, 255, (max(2, height // 16), max(2, width // 16), 3)).astype(np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float64)
        y, x = np.mgrid[0:height, 0:width]
        period, angle = rng.uniform(6, 30), rng.uniform(0, np.pi)
        base += 30 * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)[..., None]
    return base


def paste(canvas: np.ndarray, crop: np.ndarray, box: tuple[int, int, int, int], angle: float) -> None:
    """The crop scaled to the box, turned by `angle` about the box centre, written into the canvas (grey on RGB)."""
    x, y, side, _ = box
    face = Image.fromarray(crop).resize((side, side), Image.BICUBIC)
    mask = Image.new("L", face.size, 255)
    face = np.asarray(face.rotate(angle, Image.BICUBIC, expand=True), dtype=np.float64)
    mask = np.asarray(mask.rotate(angle, Image.BILINEAR, expand=True), dtype=np.float64)[..., None] / 255
    top, left = y + side // 2 - face.shape[0] // 2, x + side // 2 - face.shape[1] // 2
    region = canvas[top:top + face.shape[0], left:left + face.shape[1]]
    region[:] = region * (1 - mask) + face[..., None] * mask


def make_scene(rng: np.random.Generator, source: FaceSource, height: int = 480, width: int = 640,
               max_faces: int = MAX_FACES) -> Scene:
    canvas = background(rng, height, width)
    faces: list[SceneFace] = []
    for _ in range(int(rng.integers(max_faces + 1))):
        side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        reach = int(np.ceil(side * 0.71)) + 2  # half the diagonal: the rotated face stays inside the canvas
        for _attempt in range(50):
            cx, cy = int(rng.integers(reach, width - reach)), int(rng.integers(reach, height - reach))
            box = (cx - side // 2, cy - side // 2, side, side)
            if not any(_near(box, other.box) for other in faces):
                break
        else:
            continue  # the canvas is full: fewer faces in this scene
        crop, label = source.draw(rng)
        angle = float(rng.uniform(-MAX_ANGLE, MAX_ANGLE))
        paste(canvas, crop, box, angle)
        faces.append(SceneFace(box, crop, label, angle))
    return Scene(np.clip(canvas, 0, 255).astype(np.uint8), faces)


def _near(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether the two boxes, grown by a fifth of their side (room for rotation and a gap), overlap."""
    ga, gb = a[2] * 0.2, b[2] * 0.2
    return not (a[0] + a[2] + ga <= b[0] - gb or b[0] + b[2] + gb <= a[0] - ga
                or a[1] + a[3] + ga <= b[1] - gb or b[1] + b[3] + gb <= a[1] - ga)


def make_scenes(count: int, source: FaceSource, seed: int = 0) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [make_scene(rng, source) for _ in range(count)]
