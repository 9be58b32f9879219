"""Test-time augmentation: the views of a uint8 batch whose probabilities are averaged.

`crops` is flip x five crops: the image and four copies shifted by `SHIFT` pixels diagonally (edges
replicated), the 48x48 analogue of ten-crop evaluation.
"""

from collections.abc import Callable

import numpy as np

SHIFT = 3


def _shift(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    padded = np.pad(images, ((0, 0), (0, 0), (SHIFT, SHIFT), (SHIFT, SHIFT)), mode="edge")
    height, width = images.shape[-2:]
    return padded[..., SHIFT + dy:SHIFT + dy + height, SHIFT + dx:SHIFT + dx + width]


def views(images: np.ndarray, mode: str) -> list[np.ndarray]:
    """The augmented copies of uint8 N x 1 x H x W images for `mode` (none, flip, crops)."""
    if mode == "none":
        return [images]
    flips = [images, images[..., ::-1]]
    if mode == "flip":
        return flips
    if mode == "crops":
        offsets = [(0, 0), (-SHIFT, -SHIFT), (-SHIFT, SHIFT), (SHIFT, -SHIFT), (SHIFT, SHIFT)]
        return [_shift(flipped, dy, dx) for flipped in flips for dy, dx in offsets]
    raise ValueError(f"unknown test-time augmentation {mode!r}: expected none, flip or crops")


def predict_with_tta(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, mode: str,
                     temperature: float = 1.0) -> np.ndarray:
    """Mean probabilities over the views, computed in one call of `predict` (one batch), calibrated with
    `temperature` (the manifest's; 1: as they are)."""
    copies = views(images, mode)
    if len(copies) == 1:
        return calibrate(predict(images), temperature)
    probabilities = predict(np.ascontiguousarray(np.concatenate(copies)))
    return calibrate(probabilities.reshape(len(copies), len(images), -1).mean(0), temperature)


def calibrate(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / temperature) per row: temperature scaling of the probabilities (of several views: of their
    mean), which keeps every row's order of classes, so the label never changes."""
    if temperature == 1.0:
        return probabilities
    scaled = np.log(np.clip(probabilities, 1e-12, None)) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(probabilities.dtype)
