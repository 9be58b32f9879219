"""Finding faces in photographs, and cutting each out the way FER2013 framed its faces.

Detectors come with their model inside a PyPI package (nothing is downloaded at run time):
- `mtcnn`: MTCNN from `facenet-pytorch` (P-, R- and O-Net weights ship in the wheel; five landmarks per
  face). facenet-pytorch 2.6.0 pins torch<2.3, numpy<2 and Pillow<10.3 although its code runs on the
  versions here, so it is installed apart with `pip install --no-deps facenet-pytorch==2.6.0`; its package
  imports `requests` at load time. Registered only where it imports.
- `haar`: OpenCV's frontal-face Haar cascade (`haarcascade_frontalface_alt2.xml` from
  `opencv-python-headless` 4.x), with the eye cascade inside each face for alignment. Always there.

Every detector reports boxes framed as FER2013 frames its faces (FER2013's crops were found with OpenCV's
face detector): a square from the forehead to the chin. Each detector's own box is mapped to that framing
with factors measured on pasted FER2013 faces (`python -m bench.faces`), so that boxes from different
detectors mean the same and `crop_face` gives what the model was trained on.
"""

import importlib.util
import math
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

Box = tuple[int, int, int, int]
Point = tuple[float, float]


@dataclass
class DetectedFace:
    box: Box  # x, y, width, height in the pixels of the image passed in
    score: float  # the detector's confidence in [0, 1], higher is surer
    eyes: tuple[Point, Point] | None  # centres of the eyes, the one further left in the image first


class Detector(Protocol):
    default_min_score: float  # the least score a detection needs to be a face, unless FER_MIN_FACE_SCORE says
    name: str

    def detect(self, rgb: np.ndarray, min_size: int) -> list[DetectedFace]: ...


def _square(cx: float, cy: float, side: float) -> Box:
    return round(cx - side / 2), round(cy - side / 2), round(side), round(side)


class HaarDetector:
    """OpenCV's Viola-Jones cascade. The score is how many neighbouring windows agreed, n / (n + min_neighbors)."""

    name = "haar"
    default_min_score = 0.0  # its score is neighbour agreement, not a probability: every detection is kept
    BOX_SCALE = 1.03  # the cascade's box is 0.97 of FER2013's framing, centred on it

    def __init__(self, cascade: str = "haarcascade_frontalface_alt2.xml", scale_factor: float = 1.1,
                 min_neighbors: int = 3):
        self.faces = _cascade(cascade)
        self.eyes = _cascade("haarcascade_eye.xml")
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors

    def detect(self, rgb: np.ndarray, min_size: int) -> list[DetectedFace]:
        grey = _grey(rgb)
        size = max(1, min_size)
        boxes, neighbours = self.faces.detectMultiScale2(grey, scaleFactor=self.scale_factor,
                                                         minNeighbors=self.min_neighbors, minSize=(size, size))
        found = []
        for (x, y, w, h), n in zip(boxes, neighbours):
            box = _square(x + w / 2, y + h / 2, w * self.BOX_SCALE)
            found.append(DetectedFace(box, float(n / (n + self.min_neighbors)), self._eyes(grey, (x, y, w, h))))
        return found

    def _eyes(self, grey: np.ndarray, box: Box) -> tuple[Point, Point] | None:
        """The two eyes in the upper half of the face, one on each side, or None when the cascade is unsure."""
        x, y, w, h = box
        upper = grey[y:y + h // 2, x:x + w]
        size = max(1, w // 8)
        candidates, weights = self.eyes.detectMultiScale2(upper, scaleFactor=1.1, minNeighbors=3,
                                                          minSize=(size, size), maxSize=(w // 2, w // 2))
        sides: dict[bool, tuple[int, Point]] = {}
        for (ex, ey, ew, eh), weight in zip(candidates, weights):
            centre = (x + ex + ew / 2, y + ey + eh / 2)
            right = centre[0] > x + w / 2
            if right not in sides or weight > sides[right][0]:
                sides[right] = (weight, centre)
        if len(sides) < 2:
            return None
        left, right = sides[False][1], sides[True][1]
        return (left, right) if _plausible_eyes(left, right, w) else None


class MtcnnDetector:
    """MTCNN (Zhang et al. 2016) with facenet-pytorch's weights; the score is O-Net's face probability."""

    # Real faces score >= 0.986 on every photograph measured (bench/photos.py; a group photo's six people), false
    # faces (a hand, a glass) 0.60-0.71: see docs/benchmarks.md.
    default_min_score = 0.95

    name = "mtcnn"
    # Measured on 114 pasted FER2013 faces: MTCNN's box is 0.80 of FER2013's side wide and 1.03 high (each
    # +-0.13), its centre 0.02 side below FER2013's.
    WIDTH_SHARE, HEIGHT_SHARE, CENTRE_DROP = 0.80, 1.03, 0.02

    # Stage thresholds a notch under facenet-pytorch's (0.6, 0.7, 0.7): on pasted FER2013 faces recall rose
    # from 0.84 to 0.89 and precision stayed at 0.97.
    def __init__(self, thresholds: tuple[float, float, float] = (0.5, 0.6, 0.6), factor: float = 0.709):
        import torch
        from facenet_pytorch import MTCNN
        from facenet_pytorch.models.utils.detect_face import detect_face

        self.torch, self.detect_face = torch, detect_face
        self.nets = MTCNN(device=torch.device("cpu"))
        self.thresholds, self.factor = list(thresholds), factor

    def detect(self, rgb: np.ndarray, min_size: int) -> list[DetectedFace]:
        image = np.ascontiguousarray(rgb if rgb.ndim == 3 else np.repeat(rgb[..., None], 3, axis=2))
        if min(image.shape[:2]) < max(12, min_size):  # smaller than P-Net's window or the smallest face asked for
            return []
        # What MTCNN.detect runs, with the minimum face size given per call rather than set on the shared object.
        with self.torch.inference_mode():
            boxes, points = self.detect_face(image, max(12, min_size), self.nets.pnet, self.nets.rnet, self.nets.onet,
                                             self.thresholds, self.factor, self.torch.device("cpu"))
        found = []
        for (x1, y1, x2, y2, probability), landmarks in zip(np.asarray(boxes[0]), np.asarray(points[0])):
            side = ((x2 - x1) / self.WIDTH_SHARE + (y2 - y1) / self.HEIGHT_SHARE) / 2
            box = _square((x1 + x2) / 2, (y1 + y2) / 2 - self.CENTRE_DROP * side, side)
            left, right = (float(landmarks[0][0]), float(landmarks[0][1])), (float(landmarks[1][0]), float(landmarks[1][1]))
            eyes = (left, right) if _plausible_eyes(left, right, side) else None
            found.append(DetectedFace(box, float(probability), eyes))
        return found


def _plausible_eyes(left: Point, right: Point, face_width: float) -> bool:
    """Eyes a fifth to two thirds of the face apart, their line within 30 degrees of horizontal."""
    dx, dy = right[0] - left[0], right[1] - left[1]
    return dx > 0 and 0.2 * face_width <= math.hypot(dx, dy) <= 0.67 * face_width and abs(dy) <= dx * math.tan(
        math.radians(30))


def _cascade(file: str) -> cv2.CascadeClassifier:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + file)
    if cascade.empty():
        raise RuntimeError(f"OpenCV has no {file} in {cv2.data.haarcascades}: opencv-python-headless 4.x ships "
                           "the cascades, 5.x does not")
    return cascade


def _grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


DETECTORS: dict[str, type] = {"haar": HaarDetector}
if importlib.util.find_spec("facenet_pytorch") is not None:
    DETECTORS["mtcnn"] = MtcnnDetector


def make_detector(name: str) -> Detector:
    if name not in DETECTORS:
        hint = " (mtcnn needs `pip install --no-deps facenet-pytorch==2.6.0 requests`)" if name == "mtcnn" else ""
        raise ValueError(f"unknown face detector {name!r}: available are {', '.join(DETECTORS)}{hint}")
    return DETECTORS[name]()


def iou(a: Box, b: Box) -> float:
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(0, width) * max(0, height)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union else 0.0


def detect_faces(rgb: np.ndarray, detector: Detector, max_detect_side: int = 640, min_face: int = 48,
                 max_faces: int = 16, nms_iou: float = 0.3,
                 min_score: float = 0.0) -> tuple[list[DetectedFace], bool]:
    """Faces at least `min_face` pixels wide and scoring at least `min_score` in `rgb` (H x W x 3 or H x W
    uint8), best first, at most `max_faces` of them, and whether more were found. Detection runs on a copy whose
    longer side is at most `max_detect_side`; boxes and eyes come back in the coordinates of `rgb`."""
    height, width = rgb.shape[:2]
    scale = min(1.0, max_detect_side / max(height, width, 1))
    small = rgb
    if scale < 1:
        small = cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
    found = [_rescale(face, 1 / scale) for face in detector.detect(small, math.floor(min_face * scale))]
    found = [face for face in found if face.box[2] >= min_face and face.box[3] >= min_face and face.score >= min_score]
    found.sort(key=lambda face: (face.score, face.box[2] * face.box[3]), reverse=True)
    kept: list[DetectedFace] = []
    for face in found:  # greedy non-maximum suppression, best first
        if all(iou(face.box, other.box) <= nms_iou for other in kept):
            kept.append(face)
    return kept[:max_faces], len(kept) > max_faces


def _rescale(face: DetectedFace, factor: float) -> DetectedFace:
    if factor == 1:
        return face
    box = tuple(round(value * factor) for value in face.box)
    eyes = None if face.eyes is None else tuple((x * factor, y * factor) for x, y in face.eyes)
    return DetectedFace(box, face.score, eyes)


def crop_face(grey: np.ndarray, face: DetectedFace, size: int, margin: float = 0.0, align: bool = True) -> np.ndarray:
    """The face as a `size` x `size` uint8 crop: its box grown by `margin` of its side on every side (edges
    past the image repeat the border pixels; the box is not shifted inside), turned so the eyes lie level
    when they are known and `align` is set."""
    x, y, w, h = face.box
    centre = (x + (w - 1) / 2, y + (h - 1) / 2)  # in pixel-centre coordinates, as getRectSubPix takes it
    side = max(w, h) * (1 + 2 * margin)
    angle = 0.0
    if align and face.eyes is not None:
        (lx, ly), (rx, ry) = face.eyes
        angle = math.degrees(math.atan2(ry - ly, rx - lx))
    # Shrink a neighbourhood that still holds the turned square with area averaging first (as FER2013's
    # 48x48 crops were shrunk), then turn and cut at the final size.
    reach = side * math.sqrt(2) if angle else side
    shrink = min(1.0, size / side)
    patch_side = max(1, math.ceil(reach) + 2)
    patch = cv2.getRectSubPix(grey, (patch_side, patch_side), centre)  # repeats the border past the image
    if shrink < 1:
        patch_side = max(1, round(patch_side * shrink))
        patch = cv2.resize(patch, (patch_side, patch_side), interpolation=cv2.INTER_AREA)
    zoom = size / (side * shrink)
    middle = ((patch.shape[1] - 1) / 2, (patch.shape[0] - 1) / 2)
    matrix = cv2.getRotationMatrix2D(middle, angle, zoom)
    matrix[:, 2] += ((size - 1) / 2 - middle[0], (size - 1) / 2 - middle[1])
    return cv2.warpAffine(patch, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
