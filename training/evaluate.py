"""Evaluate an exported model directory on a data split, through the same backends and test-time augmentation
the service uses."""

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from service.runtime.backends import load_backend, resolve_device
from service.runtime.modeldir import load_manifest
from service.runtime.tta import predict_with_tta
from training.data import load_split
from training.metrics import confusion_json, confusion_matrix, expected_calibration_error, summarize
from training.plots import plot_confusion


def predict_batched(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, tta: str = "none",
                    batch_size: int = 256, temperature: float = 1.0) -> np.ndarray:
    """Probabilities of uint8 N x 1 x H x W images, `batch_size` at a time, with test-time augmentation and
    calibration: the one evaluation loop of training, export, quantization and `evaluate`."""
    return np.concatenate([predict_with_tta(predict, images[start:start + batch_size], tta, temperature)
                           for start in range(0, len(images), batch_size)])


def evaluate_model_dir(model_dir: Path, data: str, split: str = "val", backend: str = "torchscript",
                       tta: str | None = None, device: str = "auto", batch_size: int = 256,
                       plots: Path | None = None, calibrated: bool = True) -> dict:
    """Metrics, expected calibration error and confusion matrix; `tta` defaults to the manifest's and the
    probabilities are calibrated with its temperature, as the service serves them (`calibrated=False`: as the
    model gives them)."""
    manifest = load_manifest(model_dir)
    runner, _ = load_backend(model_dir, manifest, backend, resolve_device(device))
    tta = manifest.tta if tta is None else tta
    faces = load_split(data, split, manifest.input.height)
    images = faces.images.unsqueeze(1).numpy()
    temperature = manifest.temperature(tta) if calibrated else 1.0
    probs = torch.from_numpy(predict_batched(runner.predict, images, tta, batch_size, temperature))
    loss = float(torch.nn.functional.nll_loss(probs.clamp(min=1e-12).log(), faces.labels))
    confusion = confusion_matrix(faces.labels, probs.argmax(1))
    metrics = summarize(confusion, split=split, loss=loss, tta=tta)
    confusion_data = confusion_json(confusion)
    if plots is not None:
        plots.mkdir(parents=True, exist_ok=True)
        plot_confusion(confusion_data, plots / f"confusion_matrix_{split}.png", title=f"{split} ({len(faces)} images)")
        (plots / f"metrics_{split}.json").write_text(metrics.model_dump_json(indent=2))
    return {"model": str(model_dir), "version": manifest.version, "backend": backend, "data": data,
            **json.loads(metrics.model_dump_json()), "temperature": temperature,
            "ece": expected_calibration_error(probs.numpy(), faces.labels.numpy()),
            "confusion_matrix": confusion_data}
