"""Real photographs through the service's face detection: `python -m bench.photos [--detectors mtcnn haar]
[--scores 0 0.9 0.95 0.98] [--draw DIR]`.

Photographs that registry packages ship, each face's box drawn by a person who looked at the photo (checked by eye
on an overlay: `--draw DIR` writes every photo with its drawn boxes in green and the detector's in red), and
photographs and textures with no human face (a cat's face among them). Per detector and minimum detection score:
faces found (IoU >= 0.5 with a drawn box), faces missed, false faces (detections matching no drawn box), the found
faces' mean IoU, and the time per photo. Detection runs as the service runs it (`service.photos.find_faces` with
the default settings: faces >= 40 px, a detection copy of at most 1 MP).
"""

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bench.faces import MATCH_IOU, match
from service.faces import DETECTORS, iou, make_detector
from service.photos import FaceOptions, find_faces
from service.settings import Settings

Box = tuple[int, int, int, int]  # x, y, width, height in the photo's pixels


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()
    return load


def _grace_hopper() -> np.ndarray:
    import matplotlib.cbook

    return np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))


@dataclass(frozen=True)
class Photo:
    name: str
    load: Callable[[], np.ndarray]
    faces: tuple[Box, ...]  # drawn by a person: forehead (hairline) to chin, ear to ear
    source: str  # the package, and the photo's licence as the package states it


PORTRAITS = (
    Photo("astronaut", _skimage("astronaut"), ((178, 64, 96, 106),),
          "scikit-image: Eileen Collins, NASA, public domain"),
    Photo("camera", _skimage("camera"), ((197, 116, 62, 74),),
          "scikit-image: the cameraman, a three-quarter face; free to use as scikit-image's data README says"),
    Photo("grace_hopper", _grace_hopper, ((166, 112, 204, 220),),
          "matplotlib sample data: Grace Hopper, US Navy, public domain"),
)
COLLAGE_HEIGHT = 512


NO_FACES = ("chelsea", "coffee", "rocket", "horse", "coins", "hubble_deep_field", "logo", "brick", "grass", "gravel",
            "moon", "page", "retina", "text", "clock", "immunohistochemistry")


def photos() -> list[tuple[Photo, np.ndarray]]:
    """Every photograph with its image: the portraits, a collage of them (one photo with three faces: the
    portraits side by side at a common height, their drawn boxes carried over) and the photos with no face."""
    loaded = [(portrait, _rgb(portrait.load())) for portrait in PORTRAITS]
    parts, faces, left = [], [], 0
    for portrait, image in loaded:
        scale = COLLAGE_HEIGHT / image.shape[0]
        parts.append(np.asarray(Image.fromarray(image).resize((round(image.shape[1] * scale), COLLAGE_HEIGHT))))
        faces += [(left + round(x * scale), round(y * scale), round(w * scale), round(h * scale))
                  for x, y, w, h in portrait.faces]
        left += parts[-1].shape[1]
    collage = Photo("collage", lambda: np.concatenate(parts, axis=1), tuple(faces),
                    f"the three portraits side by side at {COLLAGE_HEIGHT} px high")
    empty = [Photo(name, _skimage(name), (), "scikit-image") for name in NO_FACES]
    return loaded + [(photo, _rgb(photo.load())) for photo in (collage, *empty)]


def group_photo(faces: int, height: int = 480, width: int = 640) -> np.ndarray:
    """A `width` x `height` photo of 1-4 people: the portraits' heads (each face's drawn box grown 1.8x, at 210
    px) in the corners of a grey room, the first portrait again for the fourth."""
    canvas = np.full((height, width, 3), 120, dtype=np.uint8)
    corners = [(20, 20), (width - 230, 20), (20, height - 230), (width - 230, height - 230)]
    for (left, top), portrait in zip(corners[:faces], PORTRAITS * 2):
        x, y, w, h = portrait.faces[0]
        cx, cy, side = x + w / 2, y + h / 2, max(w, h) * 1.8
        head = Image.fromarray(_rgb(portrait.load())).crop(
            (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2)))
        canvas[top:top + 210, left:left + 210] = np.asarray(head.resize((210, 210)))
    return canvas


def _rgb(image: np.ndarray) -> np.ndarray:
    """uint8 RGB (scikit-image's horse is a boolean silhouette, some others are grey)."""
    if image.dtype != np.uint8:
        image = (np.clip(image.astype(np.float64), 0, 1) * 255).astype(np.uint8)
    image = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


@dataclass
class Tally:
    faces: int = 0
    found: int = 0
    false: int = 0
    ious: float = 0.0
    false_scores: tuple[float, ...] = ()


def detections(photo: Photo, image: np.ndarray, detector, settings: Settings) -> tuple[list[tuple[Box, float]], float]:
    options = FaceOptions(48, settings.min_face_size, settings.max_faces_per_image, settings.detect_max_pixels)  # every score
    started = time.perf_counter()
    found = find_faces(image, photo.name, (image.shape[1], image.shape[0]), options, detector)
    return [(face.box, face.score) for face in found.faces], time.perf_counter() - started


def score(photo: Photo, found: list[tuple[Box, float]], min_score: float, tally: Tally) -> None:
    kept = [(box, s) for box, s in found if s >= min_score]
    pairs = match(list(photo.faces), [box for box, _ in kept])
    matched = {j for _, j in pairs}
    tally.faces += len(photo.faces)
    tally.found += len(pairs)
    tally.ious += sum(iou(photo.faces[i], kept[j][0]) for i, j in pairs)
    tally.false += len(kept) - len(pairs)
    tally.false_scores += tuple(s for j, (_, s) in enumerate(kept) if j not in matched)


def draw(photo: Photo, image: np.ndarray, found: list[tuple[Box, float]], out: Path) -> None:
    picture = Image.fromarray(image)
    pen = ImageDraw.Draw(picture)
    for x, y, w, h in photo.faces:
        pen.rectangle((x, y, x + w - 1, y + h - 1), outline=(0, 255, 0), width=2)
    for (x, y, w, h), s in found:
        pen.rectangle((x, y, x + w - 1, y + h - 1), outline=(255, 0, 0), width=1)
        pen.text((x + 2, y + 2), f"{s:.2f}", fill=(255, 0, 0))
    picture.save(out / f"{photo.name}.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.photos", description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=list(DETECTORS))
    parser.add_argument("--scores", type=float, nargs="+", default=[0.0, 0.9, 0.95, 0.98, 0.99],
                        help="minimum detection scores to report")
    parser.add_argument("--draw", type=Path, help="write each photo with its drawn (green) and detected (red) boxes")
    args = parser.parse_args(argv)
    settings = Settings()
    every = photos()
    listed = [photo for photo, _ in every]
    images = {photo.name: image for photo, image in every}
    with_faces = sum(1 for photo in listed if photo.faces)
    print(f"{len(listed)} photographs ({with_faces} with {sum(len(p.faces) for p in listed)} faces drawn by a person, "
          f"{len(listed) - with_faces} with none); found = IoU >= {MATCH_IOU} with a drawn box")
    print("| detector | min score | faces found | missed | false faces | mean IoU | ms per photo | false faces' scores |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.detectors:
        detector = make_detector(name)
        found = {}
        seconds = 0.0
        for photo in listed:
            found[photo.name], spent = detections(photo, images[photo.name], detector, settings)
            seconds += spent
            if args.draw:
                args.draw.mkdir(parents=True, exist_ok=True)
                draw(photo, images[photo.name], found[photo.name], args.draw)
        for min_score in args.scores:
            tally = Tally()
            for photo in listed:
                score(photo, found[photo.name], min_score, tally)
            mean_iou = tally.ious / tally.found if tally.found else float("nan")
            scores = ", ".join(f"{s:.3f}" for s in sorted(tally.false_scores)) or "-"
            print(f"| {name} | {min_score:g} | {tally.found}/{tally.faces} | {tally.faces - tally.found} | {tally.false} "
                  f"| {mean_iou:.2f} | {1000 * seconds / len(listed):.0f} | {scores} |", flush=True)
        true_scores = [s for photo in listed for (box, s) in found[photo.name]
                       if any(iou(box, t) >= MATCH_IOU for t in photo.faces)]
        print(f"({name}: the real faces' scores {', '.join(f'{s:.3f}' for s in sorted(true_scores)) or '-'})")
    for photo in listed:
        print(f"- {photo.name}: {photo.source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
