"""From an upright photo to the faces the model sees: detect, crop with FER2013's framing, align, resize.

`faces=auto` detects faces and, where none is found in a small and roughly square image, takes the whole image
as one face (what FER2013-style crops are); `detect` keeps only what the detector finds; `none` always takes the
whole image.
"""

import math
from dataclasses import dataclass

import cv2
import numpy as np

from service.faces import DetectedFace, Detector, crop_face, detect_faces


@dataclass
class FoundFace:
    box: tuple[int, int, int, int]  # x, y, width, height in the uploaded image's (upright) pixels
    score: float | None  # the detector's; None for a whole-image face
    source: str  # "detector" or "whole_image"


@dataclass
class Photo:
    filename: str
    width: int
    height: int
    faces: list[FoundFace]
    crops: np.ndarray  # uint8 len(faces) x 1 x S x S, what the model takes
    truncated: bool = False
    reason: str | None = None
    upright: np.ndarray | None = None  # the decoded image (grey or RGB, maybe reduced), for drawing overlays


@dataclass(frozen=True)
class FaceOptions:
    mode: str  # auto | detect | none
    size: int  # the model's input side
    min_face: int
    max_faces: int
    max_detect_pixels: int
    whole_image_max_side: int  # auto: the largest side still taken whole when no face is found


def whole_image(grey: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA if min(grey.shape) > size else cv2.INTER_LINEAR)


def find_faces(image: np.ndarray, filename: str, original_size: tuple[int, int], options: FaceOptions,
               detector: Detector) -> Photo:
    """The faces of `image` (uint8 H x W grey or H x W x 3 RGB, upright, possibly reduced from the upload's
    `original_size` (width, height)); boxes are reported in the upload's coordinates."""
    width, height = original_size
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    scale = image.shape[1] / width  # decoded pixels per uploaded pixel
    if options.mode != "none":
        detected, truncated = detect_faces(image, detector, _detection_side(image, options.max_detect_pixels),
                                           max(1, round(options.min_face * scale)), options.max_faces)
        if detected or options.mode == "detect" or not _small_and_square(width, height, options):
            reason = None if detected else f"no face of at least {options.min_face} pixels found"
            return Photo(filename, width, height, [_found(face, scale) for face in detected],
                         _crops(grey, detected, options.size), truncated, reason, image)
    faces = [FoundFace((0, 0, width, height), None, "whole_image")]
    return Photo(filename, width, height, faces, whole_image(grey, options.size)[None, None], upright=image)


def _detection_side(image: np.ndarray, max_pixels: int) -> int:
    """The longer side of a detection copy of at most `max_pixels` pixels: bounded in pixels rather than in
    side, so that a panorama's faces stay large enough to be found."""
    height, width = image.shape[:2]
    return max(1, round(max(height, width) * min(1.0, math.sqrt(max_pixels / (height * width)))))


def _small_and_square(width: int, height: int, options: FaceOptions) -> bool:
    return max(width, height) <= options.whole_image_max_side and max(width, height) <= 1.25 * min(width, height)


def _found(face: DetectedFace, scale: float) -> FoundFace:
    return FoundFace(tuple(round(value / scale) for value in face.box), round(face.score, 4), "detector")


def _crops(grey: np.ndarray, faces: list[DetectedFace], size: int) -> np.ndarray:
    if not faces:
        return np.zeros((0, 1, size, size), dtype=np.uint8)
    return np.stack([crop_face(grey, face, size) for face in faces])[:, None]
