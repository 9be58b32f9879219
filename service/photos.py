"""From an upright photo to the faces the model sees: detect, crop with FER2013's framing, align, resize.

`faces=auto` takes a face crop (a small and roughly square image, as FER2013's are: `is_face_crop`, decided from
its header before anything is decoded) whole and detects the faces of anything else; `detect` detects faces in
every image; `none` always takes the whole image.
"""

import math
from dataclasses import dataclass

import cv2
import numpy as np

from service.faces import DetectedFace, Detector, crop_face, detection_copy, min_detection_size, select_faces


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
    size: int  # the model's input side
    min_face: int
    max_faces: int
    max_detect_pixels: int
    min_score: float = 0.0  # the detector's score a face needs


def is_face_crop(size: tuple[int, int] | None, max_side: int) -> bool:
    """A face crop, which faces=auto takes whole: at most `max_side` on its longer side and roughly square."""
    if size is None:
        return False
    return max(size) <= max_side and max(size) <= 1.25 * min(size)


@dataclass
class Pending:
    """A decoded photo whose faces are still to be found: the detector takes its `detection_image`."""

    filename: str
    original_size: tuple[int, int]  # the upload's width and height
    image: np.ndarray  # decoded and upright, maybe reduced: what faces are cut from
    detection_image: np.ndarray  # `image`, reduced where it has more pixels than detection takes
    detection_scale: float  # detection_image pixels per image pixel
    min_face: int  # the smallest face, in image pixels
    min_size: int  # the smallest face, in detection_image pixels

    @property
    def key(self) -> tuple:
        """Photos the detector can take in one batch share it: their detection images' shape and smallest face."""
        return self.detection_image.shape, self.min_size


def prepare(image: np.ndarray, filename: str, original_size: tuple[int, int], options: FaceOptions) -> Pending:
    """A photo (uint8 H x W grey or H x W x 3 RGB, upright, possibly reduced from the upload's `original_size`
    (width, height)) made ready for the detector."""
    detection_image, scale = detection_copy(image, _detection_side(image, options.max_detect_pixels))
    min_face = max(1, round(options.min_face * image.shape[1] / original_size[0]))  # in decoded pixels
    return Pending(filename, original_size, image, detection_image, scale, min_face,
                   min_detection_size(min_face, scale))


def finish(pending: Pending, found: list[DetectedFace], options: FaceOptions) -> Photo:
    """The photo with the faces the detector `found` in its copy, best first, boxes in the upload's coordinates,
    each cropped to the model's input."""
    width, height = pending.original_size
    scale = pending.image.shape[1] / width  # decoded pixels per uploaded pixel
    detected, truncated = select_faces(found, pending.detection_scale, pending.min_face, options.max_faces,
                                       min_score=options.min_score)
    grey = pending.image if pending.image.ndim == 2 else cv2.cvtColor(pending.image, cv2.COLOR_RGB2GRAY)
    reason = None if detected else f"no face of at least {options.min_face} pixels found"
    return Photo(pending.filename, width, height, [_found(face, scale) for face in detected],
                 _crops(grey, detected, options.size), truncated, reason, pending.image)


def find_faces(image: np.ndarray, filename: str, original_size: tuple[int, int], options: FaceOptions,
               detector: Detector) -> Photo:
    """One photo's faces, `prepare`d, detected and `finish`ed in one go (the service batches the detection)."""
    pending = prepare(image, filename, original_size, options)
    return finish(pending, detector.detect([pending.detection_image], pending.min_size)[0], options)


def _detection_side(image: np.ndarray, max_pixels: int) -> int:
    """The longer side of a detection copy of at most `max_pixels` pixels: bounded in pixels rather than in
    side, so that a panorama's faces stay large enough to be found."""
    height, width = image.shape[:2]
    return max(1, round(max(height, width) * min(1.0, math.sqrt(max_pixels / (height * width)))))


def _found(face: DetectedFace, scale: float) -> FoundFace:
    return FoundFace(tuple(round(value / scale) for value in face.box), round(face.score, 4), "detector")


def _crops(grey: np.ndarray, faces: list[DetectedFace], size: int) -> np.ndarray:
    if not faces:
        return np.zeros((0, 1, size, size), dtype=np.uint8)
    return np.stack([crop_face(grey, face, size) for face in faces])[:, None]
