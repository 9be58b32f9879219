"""Test-time augmentation: the views of a uint8 batch whose probabilities are averaged.

`crops` is the published ten-crop (Krizhevsky et al. 2012; the FER2013 papers evaluate with it): the four corner
crops and the centre crop of `CROP` of the side, each resized back to the input size, and their mirror images.
`CROP` = 0.9 is the largest zoom the training augmentation draws (`--aug-scale 0.9 1.1`), so each view is a face
framed as the network saw faces in training.
"""

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

CROP = 0.9


def _ten_crop(images: np.ndarray) -> list[np.ndarray]:
    height, width = images.shape[-2:]
    side_y, side_x = round(height * CROP), round(width * CROP)
    corners = [(0, 0), (0, width - side_x), (height - side_y, 0), (height - side_y, width - side_x),
               ((height - side_y) // 2, (width - side_x) // 2)]
    crops = []
    for top, left in corners:
        patch = torch.from_numpy(np.ascontiguousarray(images[..., top:top + side_y, left:left + side_x])).float()
        resized = F.interpolate(patch, size=(height, width), mode="bilinear", align_corners=False)
        crops.append(resized.round().clamp(0, 255).to(torch.uint8).numpy())
    return crops + [crop[..., ::-1] for crop in crops]


def views(images: np.ndarray, mode: str) -> list[np.ndarray]:
    """The augmented copies of uint8 N x 1 x H x W images for `mode` (none, flip, crops)."""
    if mode == "none":
        return [images]
    flips = [images, images[..., ::-1]]
    if mode == "flip":
        return flips
    if mode == "crops":
        return _ten_crop(images)
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
