"""Face data from any of the supported sources, as uint8 tensors in canonical label order.

A source (`--data`) is one of:
- `synthetic` or `synthetic:N`: procedural faces (N training images; validation and test are N/5);
- a directory of image folders `<root>/<split>/<class>/*.{jpg,png,...}`, split in train/val/test;
- `fer2013.csv` as published (`emotion,pixels,Usage`);
- a course CSV (`label,feature`, space-separated pixels), which holds a single split: `train`.
Bad data raises `DataError` naming the file and line; no row is ever dropped silently.
"""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from schemas.labels import CLASSES
from service.runtime.images import ImageError, decode_image
from training import synthetic
from training.errors import TrainingError

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
FER_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
SYNTHETIC_TRAIN_SIZE = 7000
_SYNTHETIC_SEEDS = {"train": 0, "val": 1, "test": 2}
MAX_IMAGE_PIXELS = 100_000_000  # a training image larger than this is a mistake, not a face


class DataError(TrainingError, ValueError):
    """The data cannot be used as it is; the message says where and why."""


@dataclass
class FaceData:
    images: torch.Tensor  # uint8, N x size x size
    labels: torch.Tensor  # int64, N, canonical FER2013 order
    source: str
    split: str

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.labels, minlength=len(CLASSES))
        return {name: int(count) for name, count in zip(CLASSES, counts)}


def load_split(data: str, split: str, size: int = 48) -> FaceData:
    """Load one split of a source, every image resized to `size` x `size`."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    if data == "synthetic" or data.startswith("synthetic:"):
        images, labels = _load_synthetic(data, split)
    else:
        path = Path(data)
        if path.is_dir():
            images, labels = _load_image_folders(path, split, size)
        elif path.is_file():
            images, labels = _load_csv(path, split)
        else:
            raise DataError(f"{data}: no such file or directory (expected `synthetic`, a CSV file or an image folder)")
    if not labels:
        raise DataError(f"{data}: split {split!r} is empty")
    stacked = np.stack([_resize(image, size) for image in images])
    return FaceData(torch.from_numpy(stacked), torch.tensor(labels, dtype=torch.int64), data, split)


def has_split(data: str, split: str) -> bool:
    """Whether `load_split(data, split)` can find that split (without loading it)."""
    if data == "synthetic" or data.startswith("synthetic:"):
        return True
    path = Path(data)
    if path.is_dir():
        return (path / split).is_dir()
    if path.is_file():
        with path.open(newline="") as handle:
            header = next(csv.reader(handle), [])
        if [column.strip() for column in header] == ["label", "feature"]:
            return split == "train"
        usage = {name for name, mapped in FER_USAGE.items() if mapped == split}
        with path.open(newline="") as handle:
            return any(row.get("Usage") in usage for row in csv.DictReader(handle))
    return False


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def _load_synthetic(data: str, split: str) -> tuple[list[np.ndarray], list[int]]:
    count = SYNTHETIC_TRAIN_SIZE
    if ":" in data:
        try:
            count = int(data.split(":", 1)[1])
        except ValueError:
            raise DataError(f"{data}: expected `synthetic:N` with N a number of training images") from None
    if split != "train":
        count = max(count // 5, len(CLASSES))
    images, labels = synthetic.generate(count, seed=_SYNTHETIC_SEEDS[split])
    return list(images), labels.tolist()


def _load_image_folders(root: Path, split: str, size: int) -> tuple[list[np.ndarray], list[int]]:
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"{root}: no {split}/ folder (expected {root}/{split}/<class>/*.jpg)")
    images, labels = [], []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        name = class_dir.name.lower()
        if name not in CLASSES:
            raise DataError(f"{class_dir}: unknown class folder {class_dir.name!r} (expected {', '.join(CLASSES)})")
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            images.append(_read_image(file, size))
            labels.append(CLASSES.index(name))
    return images, labels


def _read_image(file: Path, size: int) -> np.ndarray:
    """Decoded as the service decodes uploads (EXIF rotation applied, 16-bit scans scaled to 8 bits), grey, at
    `size` x `size`."""
    try:
        return decode_image(file.read_bytes(), file.name, (size, size), MAX_IMAGE_PIXELS)[0]
    except (ImageError, OSError) as error:
        raise DataError(f"{file}: unreadable image ({error})") from None


def _load_csv(path: Path, split: str) -> tuple[list[np.ndarray], list[int]]:
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = [column.strip() for column in next(reader, [])]
        if header[:2] == ["emotion", "pixels"]:
            wanted = {name for name, mapped in FER_USAGE.items() if mapped == split}
            return _parse_rows(path, reader, label_column=0, pixel_column=1, usage_column=2, wanted_usage=wanted)
        if header == ["label", "feature"]:
            if split != "train":
                raise DataError(f"{path}: a `label,feature` CSV holds one split, `train`; there is no {split!r}")
            return _parse_rows(path, reader, label_column=0, pixel_column=1)
    raise DataError(f"{path}:1: unknown CSV header {header} (expected `emotion,pixels,Usage` or `label,feature`)")


def _parse_rows(path, reader, label_column, pixel_column, usage_column=None, wanted_usage=None):
    images, labels = [], []
    for row in reader:
        line = reader.line_num
        if not row:
            continue
        if usage_column is not None:
            usage = row[usage_column].strip() if len(row) > usage_column else ""
            if usage not in FER_USAGE:
                raise DataError(f"{path}:{line}: unknown Usage {usage!r} (expected {', '.join(FER_USAGE)})")
            if usage not in wanted_usage:
                continue
        if len(row) <= pixel_column:
            raise DataError(f"{path}:{line}: expected a label and a pixel column, got {len(row)} column(s)")
        labels.append(_parse_label(path, line, row[label_column]))
        images.append(_parse_pixels(path, line, row[pixel_column]))
    return images, labels


def _parse_label(path: Path, line: int, text: str) -> int:
    try:
        label = int(text)
    except ValueError:
        label = -1
    if not 0 <= label < len(CLASSES):
        raise DataError(f"{path}:{line}: unknown label {text!r} (expected 0-{len(CLASSES) - 1}: {', '.join(CLASSES)})")
    return label


def _parse_pixels(path: Path, line: int, text: str) -> np.ndarray:
    values = text.split()
    side = int(round(len(values) ** 0.5))
    if not values or side * side != len(values):
        raise DataError(f"{path}:{line}: wrong pixel count {len(values)} (expected a square image, e.g. 2304 = 48x48)")
    try:
        pixels = np.array(values, dtype=np.int64)
    except ValueError:
        bad = next(value for value in values if not value.lstrip("-").isdigit())
        raise DataError(f"{path}:{line}: non-numeric pixel {bad!r}") from None
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{path}:{line}: pixel value out of range 0-255")
    return pixels.astype(np.uint8).reshape(side, side)
