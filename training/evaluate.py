"""Evaluate an exported model directory on a data split, through the same backends the service uses."""

import json
from pathlib import Path

import numpy as np
import torch

from service.artifacts import load_manifest
from service.backends import load_backend, resolve_device
from training.data import load_split
from training.metrics import confusion_json, confusion_matrix, summarize
from training.plots import plot_confusion


def evaluate_model_dir(model_dir: Path, data: str, split: str = "val", backend: str = "torchscript",
                       tta: bool = False, device: str = "auto", batch_size: int = 256,
                       plots: Path | None = None) -> dict:
    manifest = load_manifest(model_dir)
    runner = load_backend(model_dir, manifest, backend, resolve_device(device))
    faces = load_split(data, split, manifest.input.height)
    images = faces.images.unsqueeze(1).numpy()
    probabilities = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        probs = runner.predict(batch)
        if tta:
            probs = (probs + runner.predict(np.ascontiguousarray(batch[..., ::-1]))) / 2
        probabilities.append(probs)
    probs = torch.from_numpy(np.concatenate(probabilities))
    loss = float(torch.nn.functional.nll_loss(probs.clamp(min=1e-12).log(), faces.labels))
    confusion = confusion_matrix(faces.labels, probs.argmax(1))
    metrics = summarize(confusion, split=split, loss=loss, tta=tta)
    confusion_data = confusion_json(confusion)
    if plots is not None:
        plots.mkdir(parents=True, exist_ok=True)
        plot_confusion(confusion_data, plots / f"confusion_matrix_{split}.png", title=f"{split} ({len(faces)} images)")
        (plots / f"metrics_{split}.json").write_text(metrics.model_dump_json(indent=2))
    return {"model": str(model_dir), "version": manifest.version, "backend": backend, "data": data,
            **json.loads(metrics.model_dump_json()), "confusion_matrix": confusion_data}
