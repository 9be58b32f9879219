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
    concurrent_calls: bool  # whether `detect` may run on several threads at once

    def detect(self, images: list[np.ndarray], min_size: int) -> list[list[DetectedFace]]:
        """The faces in each of `images` (uint8 H x W x 3 RGB or H x W grey, all of one size), in its pixels."""
        ...


def _square(cx: float, cy: float, side: float) -> Box:
    return round(cx - side / 2), round(cy - side / 2), round(side), round(side)


class HaarDetector:
    """OpenCV's Viola-Jones cascade. The score is how many neighbouring windows agreed, n / (n + min_neighbors)."""

    name = "haar"
    concurrent_calls = False  # OpenCV does not document its cascades as thread-safe
    default_min_score = 0.0  # its score is neighbour agreement, not a probability: every detection is kept
    BOX_SCALE = 1.03  # the cascade's box is 0.97 of FER2013's framing, centred on it

    def __init__(self, cascade: str = "haarcascade_frontalface_alt2.xml", scale_factor: float = 1.1,
                 min_neighbors: int = 3):
        self.faces = _cascade(cascade)
        self.eyes = _cascade("haarcascade_eye.xml")
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors

    def detect(self, images: list[np.ndarray], min_size: int) -> list[list[DetectedFace]]:
        return [self._detect(image, min_size) for image in images]  # a cascade gains nothing from a batch

    def _detect(self, rgb: np.ndarray, min_size: int) -> list[DetectedFace]:
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
    concurrent_calls = True  # its networks and steps keep no state between calls
    # Measured on 114 pasted FER2013 faces: MTCNN's box is 0.80 of FER2013's side wide and 1.03 high (each
    # +-0.13), its centre 0.02 side below FER2013's.
    WIDTH_SHARE, HEIGHT_SHARE, CENTRE_DROP = 0.80, 1.03, 0.02

    # Stage thresholds a notch under facenet-pytorch's (0.6, 0.7, 0.7): on pasted FER2013 faces recall rose
    # from 0.84 to 0.89 and precision stayed at 0.97.
    def __init__(self, thresholds: tuple[float, float, float] = (0.5, 0.6, 0.6), factor: float = 0.709):
        import torch
        from facenet_pytorch import MTCNN
        from facenet_pytorch.models.utils import detect_face as steps
        from torchvision.ops import nms

        from service.runtime.backends import cpu_has_fast_bf16

        self.torch, self.steps, self.nms = torch, steps, nms
        # Channels-last runs R- and O-Net 2.5-3.5x faster on this CPU (oneDNN's pooling and convolutions).
        self.nets = MTCNN(device=torch.device("cpu")).to(memory_format=torch.channels_last)
        # O-Net in bf16 where the CPU has bf16 instructions: 2.6x faster (AMX); P- and R-Net are slower in bf16.
        self.onet_dtype = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
        self.thresholds, self.factor = thresholds, factor

    def detect(self, images: list[np.ndarray], min_size: int) -> list[list[DetectedFace]]:
        """facenet-pytorch's `detect_face` over a batch (its steps and networks, each network run over every
        image's candidates at once), with changes that make it about 2x faster on one photo and 2.3-2.8x per photo
        on a batch of 8 here (docs/benchmarks.md): channels-last tensors, networks run in chunks of the size they run fastest in, and each candidate
        area-resized by OpenCV from the pyramid level nearest its size instead of by one torch call per candidate
        from the full image."""
        height, width = images[0].shape[:2]
        min_size = max(12, min_size)
        if min(height, width) < min_size:  # smaller than P-Net's window or the smallest face asked for
            return [[] for _ in images]
        rgb = np.stack([image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2) for image in images])
        with self.torch.inference_mode():
            levels, half = self._pyramid(rgb, min_size)
            boxes, owners = self._propose(levels)
            sources = [rgb, half, *(level for _, level in levels)]  # what candidates are cut from
            boxes, owners, regression = self._refine(sources, boxes, owners)
            boxes = self.steps.rerec(self.steps.bbreg(boxes, regression))
            boxes, owners, landmarks = self._output(sources, boxes, owners)
        found: list[list[DetectedFace]] = [[] for _ in images]
        for (x1, y1, x2, y2, probability), points, owner in zip(boxes.tolist(), landmarks.tolist(), owners.tolist()):
            side = ((x2 - x1) / self.WIDTH_SHARE + (y2 - y1) / self.HEIGHT_SHARE) / 2
            box = _square((x1 + x2) / 2, (y1 + y2) / 2 - self.CENTRE_DROP * side, side)
            left, right = tuple(points[0]), tuple(points[1])
            found[owner].append(DetectedFace(box, probability, (left, right) if _plausible_eyes(left, right, side)
                                             else None))
        return found

    def _scales(self, height: int, width: int, min_size: int) -> list[float]:
        """P-Net's scales: from 12 / min_size down by `factor` while the image stays at least 12 pixels."""
        scale, scales = 12.0 / min_size, []
        while min(height, width) * scale >= 12:
            scales.append(scale)
            scale *= self.factor
        return scales

    def _pyramid(self, rgb: np.ndarray, min_size: int) -> tuple[list[tuple[float, np.ndarray]], np.ndarray]:
        """P-Net's levels, (scale, uint8 N x h x w x 3) sized as facenet-pytorch sizes them, and the half image (made
        exactly: OpenCV's fast path), from which large candidates are cut; all area-resized, as facenet-pytorch
        resizes. P-Net's levels are made from the half image where they are smaller (from the full image a level
        took 2.3 ms here, from the half a fifth of it; each level made from the next larger was cheaper still, but
        found a face in a cat)."""
        height, width = rgb.shape[1:3]
        half = np.stack([cv2.resize(image, (width // 2, height // 2), interpolation=cv2.INTER_AREA) for image in rgb])
        levels = []
        for scale in self._scales(height, width, min_size):
            source = half if scale <= 0.5 else rgb
            levels.append((scale, np.stack([cv2.resize(image, (int(width * scale + 1), int(height * scale + 1)),
                                                       interpolation=cv2.INTER_AREA) for image in source])))
        return levels, half

    def _propose(self, levels: list[tuple[float, np.ndarray]]):
        """P-Net over the pyramid: candidate boxes (x1, y1, x2, y2, score) and the image each is in."""
        torch, steps = self.torch, self.steps
        boxes, owners = [], []
        for scale, level in levels:
            regression, probabilities = self.nets.pnet(_network_input(level))
            found, found_owners = steps.generateBoundingBox(regression, probabilities[:, 1], scale, self.thresholds[0])
            keep = self._per_image(found, found_owners, lambda mine: self.nms(mine[:, :4], mine[:, 4], 0.5))
            boxes.append(found[keep])
            owners.append(found_owners[keep])
        boxes, owners = torch.cat(boxes), torch.cat(owners)
        keep = self._per_image(boxes, owners, lambda mine: self.nms(mine[:, :4], mine[:, 4], 0.7))
        boxes, owners = boxes[keep], owners[keep]
        sides = boxes[:, 2:4] - boxes[:, 0:2]
        corners = torch.cat([boxes[:, 0:2] + boxes[:, 5:7] * sides, boxes[:, 2:4] + boxes[:, 7:9] * sides], dim=1)
        return steps.rerec(torch.cat([corners, boxes[:, 4:5]], dim=1)), owners

    def _refine(self, sources: list[np.ndarray], boxes, owners):
        """R-Net on P-Net's candidates: those it keeps, with its box regression."""
        if not len(boxes):
            return boxes, owners, boxes[:, :4]
        regression, probabilities = _in_chunks(self.nets.rnet, self._cut(sources, boxes, owners, 24), 256)
        score = probabilities[:, 1]
        passed = score > self.thresholds[1]
        boxes = self.torch.cat([boxes[passed, :4], score[passed, None]], dim=1)
        owners, regression = owners[passed], regression[passed]
        keep = self._per_image(boxes, owners, lambda mine: self.nms(mine[:, :4], mine[:, 4], 0.7))
        return boxes[keep], owners[keep], regression[keep]

    def _output(self, sources: list[np.ndarray], boxes, owners):
        """O-Net on R-Net's boxes: the faces (x1, y1, x2, y2, probability), whose images, and five landmarks each."""
        torch, steps = self.torch, self.steps
        if not len(boxes):
            return boxes, owners, torch.zeros((0, 5, 2))
        with torch.autocast("cpu", dtype=self.onet_dtype, enabled=self.onet_dtype != torch.float32):
            outputs = _in_chunks(self.nets.onet, self._cut(sources, boxes, owners, 48), 64)
        regression, landmarks, probabilities = (output.float() for output in outputs)
        score = probabilities[:, 1]
        passed = score > self.thresholds[2]
        boxes = torch.cat([boxes[passed, :4], score[passed, None]], dim=1)
        owners, regression, landmarks = owners[passed], regression[passed], landmarks[passed]
        sides = boxes[:, 2:4] - boxes[:, 0:2] + 1
        points = torch.stack([sides[:, None, 0] * landmarks[:, :5] + boxes[:, None, 0] - 1,
                              sides[:, None, 1] * landmarks[:, 5:] + boxes[:, None, 1] - 1], dim=2)
        boxes = steps.bbreg(boxes, regression)
        keep = self._per_image(boxes, owners, lambda mine: steps.nms_numpy(mine[:, :4].numpy(), mine[:, 4].numpy(),
                                                                           0.7, "Min"))
        return boxes[keep], owners[keep], points[keep]

    def _per_image(self, boxes, owners, nms):
        """The indices `nms` keeps, run on each image's boxes alone, in their order: a photo keeps the same boxes
        whatever photos share its batch (one NMS over all, with boxes offset per image as torchvision's and
        facenet-pytorch's batched NMS do, broke score ties and rounded coordinates with the company: O-Net's bf16
        scores tie often, and boxes moved by up to 8 pixels)."""
        torch = self.torch
        kept = [indices[torch.as_tensor(nms(boxes[indices]), dtype=torch.long)]
                for indices in (torch.nonzero(owners == owner)[:, 0] for owner in torch.unique(owners).tolist())]
        return torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long)

    def _cut(self, sources: list[np.ndarray], boxes, owners, side: int):
        """Each candidate's box (1-based inclusive image pixels, clipped to the image as facenet-pytorch's `pad`
        clips it) resized to `side` x `side`, the next network's input: cut from the smallest of `sources` (the image
        first, then smaller copies) in which it is still at least 1.5 `side` pixels, so that every resize is small
        (one from the full image took up to half a millisecond). At 1 `side` the twice-resampled cut differed
        enough to pass a cat's face through O-Net (0.79); at 1.5 it does not. Where each box lies in its source is
        worked out for all boxes at once: per box, the loop only resizes (bookkeeping in the loop had cost more
        than the resize)."""
        height, width = sources[0].shape[1:3]
        tops, bottoms, lefts, rights = self.steps.pad(boxes, width, height)
        extents = np.maximum(bottoms - tops, rights - lefts) + 1
        # the source each box is cut from: the smallest in which it is at least 1.5 side, else the image itself
        heights = np.array([images.shape[1] for images in sources])
        fits = extents[:, None] * heights[None, :] / height >= 1.5 * side
        fits[:, 0] = True
        chosen = np.where(fits, heights[None, :], np.inf).argmin(axis=1)
        # the box in its source's pixels: each source's own ratio, as its sides were rounded
        level_heights = heights[chosen]
        level_widths = np.array([images.shape[2] for images in sources])[chosen]
        sy, sx = level_heights / height, level_widths / width
        y0 = np.minimum(((tops - 1) * sy).astype(int), level_heights - 1)
        x0 = np.minimum(((lefts - 1) * sx).astype(int), level_widths - 1)
        y1 = np.maximum(y0 + 1, np.round(bottoms * sy).astype(int))
        x1 = np.maximum(x0 + 1, np.round(rights * sx).astype(int))
        empty = (bottoms < tops) | (rights < lefts)
        cuts = np.zeros((len(boxes), side, side, 3), dtype=np.uint8)
        for cut, source, owner, top, bottom, left, right, skip in zip(  # slice bounds in the source's pixels
                cuts, chosen.tolist(), owners.tolist(), y0.tolist(), y1.tolist(), x0.tolist(), x1.tolist(),
                empty.tolist()):
            if not skip:
                cut[:] = cv2.resize(sources[source][owner, top:bottom, left:right], (side, side),
                                    interpolation=cv2.INTER_AREA)
        return _network_input(cuts)


def _in_chunks(net, inputs, size: int) -> tuple:
    """`net(inputs)` a chunk at a time: per candidate, O-Net takes 2.4x longer in batches of 256 than of 64 on this
    CPU (the chunk's activations outgrow the cache), R-Net 1.3x longer in one of 1,600 than of 256."""
    import torch

    outputs = [net(inputs[start:start + size]) for start in range(0, len(inputs), size)]
    return tuple(torch.cat(parts) for parts in zip(*outputs))


def _network_input(images: np.ndarray):
    """uint8 N x H x W x 3 as MTCNN's networks take it: float, scaled to about [-1, 1], channels-last (which the
    N x H x W x 3 memory already is)."""
    import torch

    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() - 127.5) * 0.0078125


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
    """The IoU of two boxes (x y w h): `iou_matrix` of one box each."""
    return float(iou_matrix(np.array([a]), np.array([b]))[0, 0])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (N x 4, x y w h) with every box in `b` (M x 4); 0 where both are empty."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    a, b = a[:, None, :].astype(np.float64), b[None, :, :].astype(np.float64)
    right, bottom = np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]), np.minimum(a[..., 1] + a[..., 3],
                                                                                         b[..., 1] + b[..., 3])
    inter = np.clip(right - np.maximum(a[..., 0], b[..., 0]), 0, None) * np.clip(
        bottom - np.maximum(a[..., 1], b[..., 1]), 0, None)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def detection_copy(rgb: np.ndarray, max_detect_side: int) -> tuple[np.ndarray, float]:
    """The image detection runs on, its longer side at most `max_detect_side`, and its pixels per pixel of `rgb`."""
    height, width = rgb.shape[:2]
    scale = min(1.0, max_detect_side / max(height, width, 1))
    if scale == 1:
        return rgb, 1.0
    return cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))),
                      interpolation=cv2.INTER_AREA), scale


def select_faces(found: list[DetectedFace], scale: float, min_face: int = 48, max_faces: int = 16,
                 nms_iou: float = 0.3, min_score: float = 0.0) -> tuple[list[DetectedFace], bool]:
    """Of a detection copy's faces (`scale` of the image's pixels), those at least `min_face` image pixels wide
    and scoring at least `min_score`, in the image's coordinates, best first, at most `max_faces` of them, and
    whether more were found."""
    found = [_rescale(face, 1 / scale) for face in found]
    found = [face for face in found if face.box[2] >= min_face and face.box[3] >= min_face and face.score >= min_score]
    found.sort(key=lambda face: (face.score, face.box[2] * face.box[3]), reverse=True)
    boxes = np.array([face.box for face in found]).reshape(-1, 4)
    overlap = iou_matrix(boxes, boxes)
    kept: list[int] = []
    for index in range(len(found)):  # greedy non-maximum suppression, best first
        if all(overlap[index, other] <= nms_iou for other in kept):
            kept.append(index)
    return [found[index] for index in kept[:max_faces]], len(kept) > max_faces


def min_detection_size(min_face: int, scale: float) -> int:
    """The smallest face, in detection-copy pixels, that is `min_face` pixels in the image."""
    return math.floor(min_face * scale)


def detect_faces(rgb: np.ndarray, detector: Detector, max_detect_side: int = 640, min_face: int = 48,
                 max_faces: int = 16, nms_iou: float = 0.3,
                 min_score: float = 0.0) -> tuple[list[DetectedFace], bool]:
    """One image's faces (H x W x 3 or H x W uint8), as `select_faces` keeps them, detected on its copy of at
    most `max_detect_side`; boxes and eyes in the coordinates of `rgb`. The service batches the same steps."""
    small, scale = detection_copy(rgb, max_detect_side)
    found = detector.detect([small], min_detection_size(min_face, scale))[0]
    return select_faces(found, scale, min_face, max_faces, nms_iou, min_score)


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
