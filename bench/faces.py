"""`python -m bench.faces [--model DIR] [--scenes N]`: the face detectors compared on composite scenes.

For each detector and face source (FER2013 validation faces where `../shared/data/fer2013` exists, the
procedural faces always): recall and precision at IoU >= 0.5 for faces of 48 px and more, ms per scene and,
with `--model`, the share of found faces whose predicted label equals the label predicted on the original
48x48 crop (both with the model's test-time augmentation, as served), how often each of the two is the face's
true label, and what a perfect detector could reach. Prints a table per part. Real photographs: bench/photos.py.
"""

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from service.faces import DETECTORS, crop_face, detect_faces, iou, make_detector
from service.runtime.backends import load_backend
from service.runtime.modeldir import load_manifest
from service.runtime.tta import predict_with_tta
from tests.scenes import (
    FER2013_VAL,
    Scene,
    fer2013_source,
    make_scenes,
    synthetic_source,
)

MIN_GT_FACE = 48
MATCH_IOU = 0.5


@dataclass
class SceneScore:
    faces: int = 0
    found: int = 0
    detections: int = 0
    agreed: int = 0
    right_found: int = 0  # found faces whose label on the detected crop is the face's true label
    right_original: int = 0  # the same faces, labelled on their original crop
    seconds: float = 0.0


def match(truth: list[tuple[int, int, int, int]], found: list[tuple[int, int, int, int]]) -> list[tuple[int, int]]:
    """Pairs (truth index, found index) matched greedily by IoU >= 0.5, each side used once."""
    pairs = sorted(((iou(t, f), i, j) for i, t in enumerate(truth) for j, f in enumerate(found)), reverse=True)
    used_truth, used_found, matched = set(), set(), []
    for overlap, i, j in pairs:
        if overlap >= MATCH_IOU and i not in used_truth and j not in used_found:
            used_truth.add(i), used_found.add(j), matched.append((i, j))
    return matched


def score_detector(detector, scenes: list[Scene], model, tta: str, margin: float, min_face: int) -> SceneScore:
    score = SceneScore()
    for scene in scenes:
        started = time.perf_counter()
        faces, _ = detect_faces(scene.image, detector, min_face=min_face)
        score.seconds += time.perf_counter() - started
        truth = [face for face in scene.faces if face.box[2] >= MIN_GT_FACE]
        matched = match([face.box for face in truth], [face.box for face in faces])
        score.faces += len(truth)
        score.found += len(matched)
        score.detections += len(faces)
        if model is not None and matched:
            grey = np.asarray(Image.fromarray(scene.image).convert("L"))  # as the service decodes uploads
            crops = np.stack([crop_face(grey, faces[j], 48, margin) for _, j in matched])
            originals = np.stack([truth[i].crop for i, _ in matched])
            predicted = predict_with_tta(model.predict, np.concatenate([crops, originals])[:, None], tta).argmax(1)
            on_detected, on_original = predicted[:len(matched)], predicted[len(matched):]
            labels = np.array([truth[i].label for i, _ in matched])
            score.agreed += int((on_detected == on_original).sum())
            score.right_found += int((on_detected == labels).sum())
            score.right_original += int((on_original == labels).sum())
    return score


def agreement_ceiling(scenes: list[Scene], model, tta: str) -> tuple[int, float, float]:
    """What label agreement a perfect detector could reach: the label of each pasted face cut out at its true box
    with its rotation undone (only the resampling differs from the original crop) against the original's, with
    the model's TTA; and, without TTA (flip TTA would make the two the same), the label of the original's mirror
    image against the original's. Returns (faces, both shares)."""
    unturned, originals = [], []
    for scene in scenes:
        grey = np.asarray(Image.fromarray(scene.image).convert("L"))
        for face in (face for face in scene.faces if face.box[2] >= MIN_GT_FACE):
            x, y, side, _ = face.box
            turn = cv2.getRotationMatrix2D((x + (side - 1) / 2, y + (side - 1) / 2), -face.angle, 1.0)
            upright = cv2.warpAffine(grey, turn, (grey.shape[1], grey.shape[0]), flags=cv2.INTER_LINEAR)
            unturned.append(cv2.resize(upright[y:y + side, x:x + side], (48, 48), interpolation=cv2.INTER_AREA))
            originals.append(face.crop)
    original = np.stack(originals)[:, None]
    served, resampled = (predict_with_tta(model.predict, batch, tta).argmax(1)
                         for batch in (original, np.stack(unturned)[:, None]))
    plain, mirrored = (model.predict(np.ascontiguousarray(batch)).argmax(1) for batch in (original, original[..., ::-1]))
    return len(originals), float((resampled == served).mean()), float((mirrored == plain).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faces", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a model directory made by `python -m training`")
    parser.add_argument("--scenes", type=int, default=100, help="composite scenes per face source")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (MTCNN and the model)")
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=list(DETECTORS))
    parser.add_argument("--min-face", type=int, default=40, help="smallest face the detectors report, px")
    parser.add_argument("--margin", type=float, default=0.0, help="crop margin for the label agreement")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    model, tta = None, "none"
    if args.model:
        manifest = load_manifest(args.model)
        model, _ = load_backend(args.model, manifest, "torchscript", torch.device("cpu"))
        tta = manifest.tta  # as the service predicts
    detectors = {name: make_detector(name) for name in args.detectors}
    sources = [synthetic_source()]
    if FER2013_VAL.is_dir():
        sources.insert(0, fer2013_source())
    else:
        print(f"FER2013 is not at {FER2013_VAL}: procedural faces only")

    print(f"Composite scenes: {args.scenes} per source (640x480, 0-6 faces of 48-160 px, +-10 degrees), seed "
          f"{args.seed}; IoU >= {MATCH_IOU}; detectors report faces >= {args.min_face} px; torch threads "
          f"{torch.get_num_threads()}")
    print("| faces | detector | faces there | recall | precision | label agreement | right: detected / original "
          "crop | ms per scene |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    ceilings = {}
    for source in sources:
        scenes = make_scenes(args.scenes, source, seed=args.seed)
        if model is not None:
            ceilings[source.name] = agreement_ceiling(scenes, model, tta)
        for name, detector in detectors.items():
            score = score_detector(detector, scenes, model, tta, args.margin, args.min_face)
            labelled = model is not None and score.found
            agreement = f"{score.agreed / score.found:.1%}" if labelled else "-"
            right = (f"{score.right_found / score.found:.1%} / {score.right_original / score.found:.1%}"
                     if labelled else "-")
            print(f"| {source.name} | {name} | {score.faces} | {score.found / max(1, score.faces):.3f} | "
                  f"{score.found / max(1, score.detections):.3f} | {agreement} | {right} | "
                  f"{1000 * score.seconds / len(scenes):.0f} |", flush=True)
    if model is not None:
        print("\nLabel agreement a perfect detector could reach (faces >= 48 px; true box, rotation undone):")
        for source, (faces, resampled, mirrored) in ceilings.items():
            print(f"- {source}: {faces} faces; resampled only {resampled:.1%}; the original's mirror image (no TTA) "
                  f"{mirrored:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
