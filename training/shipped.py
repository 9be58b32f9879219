"""Shipped weights and their card: `NAME.safetensors` (fp16) beside `NAME.card.json`, which holds the
architecture, classes, input size, training config, validation metrics, history, confusion matrix, TTA,
temperatures and the sha256 of the weights file it vouches for."""

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from schemas.manifest import Calibration
from service.runtime.architectures import FerNet, build_model
from service.runtime.modeldir import (
    Artifact,
    artifact_path,
    file_sha256,
    load_manifest,
    read_json,
)
from training.errors import TrainingError


INT8_CALIBRATION_SUFFIX = ".int8-calibration.json"  # the int8 model's activation ranges, beside the weights


class WeightsError(TrainingError):
    """Shipped weights are missing, truncated, tampered with or do not fit their card."""


def beside(weights: Path, suffix: str) -> Path:
    """A file shipped beside `NAME.safetensors`: `NAME<suffix>` (its card, the card in Markdown, its diagram)."""
    return weights.with_name(weights.name.removesuffix(".safetensors") + suffix)


def card_path(weights: Path) -> Path:
    return beside(weights, ".card.json")


def save_shipped_weights(model_dir: Path, weights: Path) -> dict:
    """fp16 safetensors of a model directory's weights, and its card (the figures of that directory)."""
    manifest = load_manifest(model_dir)
    state = load_file(artifact_path(model_dir, manifest, Artifact.WEIGHTS))
    half = {name: tensor.half() if tensor.is_floating_point() else tensor for name, tensor in state.items()}
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file(half, weights)
    read = lambda artifact, default: read_json(model_dir, manifest, artifact, default)  # noqa: E731
    card = {"file": weights.name, "sha256": file_sha256(weights), "bytes": weights.stat().st_size,
            "architecture": manifest.architecture, "classes": manifest.classes, "input_size": manifest.input.height,
            "tta": manifest.tta, "training": manifest.training.model_dump(),
            "validation": manifest.validation.model_dump() if manifest.validation else None,
            "history": read(Artifact.HISTORY, []), "confusion_matrix": read(Artifact.CONFUSION_MATRIX, None),
            "faithfulness": read(Artifact.FAITHFULNESS, None),
            "calibrations": [calibration.model_dump() for calibration in manifest.calibrations]}
    card_path(weights).write_text(json.dumps(card, indent=1))
    return card


def card_calibrations(card: dict) -> list[Calibration]:
    """The temperatures a card ships, one per TTA (cards written before 2026-12-06: one, as `calibration`)."""
    recorded = card.get("calibrations", [card["calibration"]] if card.get("calibration") else [])
    return [Calibration(**calibration) for calibration in recorded]


def load_shipped_weights(weights: Path) -> tuple[FerNet, dict]:
    """The model and its card; WeightsError naming the file when either is missing, truncated or tampered."""
    card_file = card_path(weights)
    if not weights.is_file():
        raise WeightsError(f"{weights}: weights file not found")
    if not card_file.is_file():
        raise WeightsError(f"{card_file}: the model card of {weights.name} is missing")
    try:
        card = json.loads(card_file.read_text())
        expected = card["sha256"]
    except (ValueError, KeyError, TypeError) as error:
        raise WeightsError(f"{card_file}: not a valid model card ({error})") from None
    actual = file_sha256(weights)
    if actual != expected:
        raise WeightsError(f"{weights}: sha256 {actual[:16]}... differs from {expected[:16]}... in {card_file.name}: "
                           "the file is truncated or was changed")
    try:
        state = {name: tensor.float() if tensor.is_floating_point() else tensor
                 for name, tensor in load_file(weights).items()}
        model = build_model(card["architecture"], card["training"]["image_size"], len(card["classes"]))
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, KeyError) as error:
        raise WeightsError(f"{weights}: cannot be loaded as {card.get('architecture')} ({error})") from None
    return model.eval(), card
