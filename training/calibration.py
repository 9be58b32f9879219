"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): a temperature T per TTA,
fitted on held-out faces so that the served probabilities, softmax(log(p) / T) of what the model and that TTA
give, are right as often as they say. It changes no label (the map keeps each row's order) and is applied after TTA by
every backend (service/runtime/tta.py), so TorchScript, ONNX and int8 answer alike."""

import math
from pathlib import Path
from typing import get_args

import numpy as np

from schemas.manifest import Calibration, TtaMode
from service.runtime.backends import load_backend
from service.runtime.modeldir import (
    Artifact,
    add_artifact,
    load_manifest,
    write_manifest,
)
from service.runtime.tta import calibrate
from training.data import has_split, load_split
from training.evaluate import predict_batched
from training.metrics import expected_calibration_error, reliability
from training.plots import plot_reliability

BINS = 15
TTA_MODES: tuple[str, ...] = get_args(TtaMode)
TEMPERATURES = (0.05, 20.0)  # the search range


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, None)).mean())


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray, steps: int = 80) -> float:
    """The temperature of least negative log-likelihood, by golden-section search over log T (the likelihood is
    convex in 1 / T, so it has one minimum there)."""
    def loss(log_t: float) -> float:
        return negative_log_likelihood(calibrate(probabilities, math.exp(log_t)), labels)

    low, high = (math.log(t) for t in TEMPERATURES)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    for _ in range(steps):
        if loss_a <= loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return math.exp((low + high) / 2)


def fit_calibration(probabilities: np.ndarray, labels: np.ndarray, split: str, tta: str) -> Calibration:
    temperature = fit_temperature(probabilities, labels)
    calibrated = calibrate(probabilities, temperature)
    return Calibration(temperature=round(temperature, 5), split=split, samples=len(labels), tta=tta, bins=BINS,
                       ece_before=expected_calibration_error(probabilities, labels, BINS),
                       ece_after=expected_calibration_error(calibrated, labels, BINS),
                       nll_before=negative_log_likelihood(probabilities, labels),
                       nll_after=negative_log_likelihood(calibrated, labels),
                       reliability_before=reliability(probabilities, labels, BINS),
                       reliability_after=reliability(calibrated, labels, BINS))


def calibrate_model_dir(model_dir: Path, images: np.ndarray, labels: np.ndarray, split: str,
                        ttas: tuple[str, ...] = TTA_MODES) -> list[Calibration]:
    """Fit the directory's temperature for each of `ttas` (default: every TTA the service can be set to serve) on
    held-out faces (uint8 N x H x W) through its TorchScript model, record them in the manifest and draw the
    reliability diagram of its own TTA beside it."""
    import torch

    manifest = load_manifest(model_dir)
    backend, _ = load_backend(model_dir, manifest, "torchscript", torch.device("cpu"))
    faces = np.ascontiguousarray(images[:, None])
    return record_calibration(model_dir, [
        fit_calibration(predict_batched(backend.predict, faces, tta), np.asarray(labels), split, tta) for tta in ttas])


def calibrate_missing(model_dir: Path, data: str | None) -> tuple[str, ...]:
    """Fit the temperatures of the TTAs the directory has none for on `data`'s validation split, where it has one;
    the TTAs left without a temperature."""
    manifest = load_manifest(model_dir)
    missing = tuple(tta for tta in TTA_MODES if manifest.calibration_for(tta) is None)
    if not missing or not data or not has_split(data, "val"):
        return missing
    faces = load_split(data, "val", manifest.input.height)
    calibrate_model_dir(model_dir, faces.images.numpy(), faces.labels.numpy(), "val", missing)
    return ()


def record_calibration(model_dir: Path, calibrations: list[Calibration]) -> list[Calibration]:
    """The temperatures into the manifest (which every backend's predictions then apply, each with its TTA),
    replacing those of the same TTAs, with the diagram of the manifest's own TTA."""
    manifest = load_manifest(model_dir)
    fitted = {calibration.tta for calibration in calibrations}
    manifest.calibrations = [kept for kept in manifest.calibrations if kept.tta not in fitted] + calibrations
    write_manifest(model_dir, manifest)
    if manifest.calibration and manifest.tta in fitted:  # the diagram of the TTA served by default, when it changed
        plot_reliability(manifest.calibration, Path(model_dir) / Artifact.RELIABILITY_PLOT.file)
        add_artifact(model_dir, manifest, Artifact.RELIABILITY_PLOT)
    return calibrations
