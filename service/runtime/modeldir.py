"""Reading a model directory made by `python -m training`: the manifest and the files it vouches for."""

import hashlib
import json
from enum import StrEnum
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from schemas.manifest import MANIFEST_FILE, ArtifactInfo, Manifest
from service.runtime.architectures import FerNet, build_model


class Artifact(StrEnum):
    """A model directory's files by role: the role is the key of the manifest's `artifacts` (which vouches for
    each file's sha256) and `file` is the name the file is written under."""

    TORCHSCRIPT = "torchscript", "model.pt"
    ONNX = "onnx", "model.onnx"
    ONNX_INT8 = "onnx_int8", "model.int8.onnx"  # `export --int8`
    INT8_CALIBRATION = "int8_calibration", "int8-calibration.json"  # its activation ranges (ONNX Runtime's cache)
    WEIGHTS = "weights", "weights.safetensors"  # fp32: the eager model explanations take gradients of
    ARCHITECTURE = "architecture", "architecture.json"
    HISTORY = "history", "history.json"
    HISTORY_CSV = "history_csv", "history.csv"
    HISTORY_PLOT = "history_plot", "history.png"
    METRICS = "metrics", "metrics.json"
    CONFUSION_MATRIX = "confusion_matrix", "confusion_matrix.json"
    CONFUSION_PLOT = "confusion_plot", "confusion_matrix.png"
    FAITHFULNESS = "faithfulness", "faithfulness.json"  # `export --explanations`
    RELIABILITY_PLOT = "reliability_plot", "reliability.png"  # the calibration's diagram
    REPORT = "report", "report.html"  # `training report`

    def __new__(cls, role: str, file: str):
        member = str.__new__(cls, role)
        member._value_ = role
        member.file = file
        return member


# What a run writes beside the models (and export copies from the run): the figures of its best epoch.
RUN_FILES = (Artifact.HISTORY, Artifact.HISTORY_CSV, Artifact.HISTORY_PLOT, Artifact.METRICS,
             Artifact.CONFUSION_MATRIX, Artifact.CONFUSION_PLOT, Artifact.ARCHITECTURE)


class ModelDirError(RuntimeError):
    """The model directory is missing, incomplete or does not match its manifest."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(model_dir: Path) -> Manifest:
    """The manifest, after checking that every artifact it lists is present with the recorded sha256."""
    path = Path(model_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ModelDirError(f"{path} not found: point the model directory at the output of "
                            "`python -m training train` or `export` (make model builds models/default)")
    try:
        manifest = Manifest.model_validate_json(path.read_text())
    except (ValidationError, ValueError) as error:
        raise ModelDirError(f"{path} is not a valid manifest: {error}") from None
    for role, artifact in manifest.artifacts.items():
        file = path.parent / artifact.path
        if not file.is_file():
            raise ModelDirError(f"{file} ({role}) is listed in {path} but missing")
        if file_sha256(file) != artifact.sha256:
            raise ModelDirError(f"{file} ({role}) is corrupt: its sha256 differs from the one in {path}")
    return manifest


def write_atomically(path: Path, text: str) -> None:
    """Readers (a starting service) see the old file or the new one, never half of one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.chmod(0o644)  # read by the service's user, whoever wrote it
    partial.replace(path)


def write_manifest(model_dir: Path, manifest: Manifest) -> None:
    write_atomically(Path(model_dir) / MANIFEST_FILE, manifest.model_dump_json(indent=2))


def artifact_info(model_dir: Path, filename: str) -> ArtifactInfo:
    """A file's entry in the manifest; the file is made readable by every user on the way, since the service (in a
    container, uid 10001) is rarely the user who exported it, and some writers (safetensors', ONNX Runtime's)
    create their files 0600."""
    path = Path(model_dir) / filename
    path.chmod(0o644)
    return ArtifactInfo(path=filename, sha256=file_sha256(path), bytes=path.stat().st_size)


def add_artifact(model_dir: Path, manifest: Manifest, artifact: Artifact) -> None:
    """List a file written into the directory, so the manifest vouches for it (sha256)."""
    manifest.artifacts[artifact] = artifact_info(model_dir, artifact.file)
    write_manifest(model_dir, manifest)


def artifact_path(model_dir: Path, manifest: Manifest, artifact: Artifact) -> Path | None:
    """Where the manifest says the file is; None when the directory has none."""
    listed = manifest.artifacts.get(artifact)
    return Path(model_dir) / listed.path if listed else None


def read_json(model_dir: Path, manifest: Manifest, artifact: Artifact, default):
    """A report file (history, confusion matrix, architecture, faithfulness) when the directory has it."""
    path = artifact_path(model_dir, manifest, artifact)
    return json.loads(path.read_text()) if path else default


def load_eager_model(model_dir: Path, manifest: Manifest, device: torch.device) -> FerNet:
    """The network rebuilt by name from the registry with the directory's verified fp32 weights, frozen: hooks
    work on it and explanations take gradients with respect to their inputs only."""
    weights = artifact_path(model_dir, manifest, Artifact.WEIGHTS)
    if weights is None:
        raise ModelDirError(f"{model_dir}: the manifest lists no `weights` artifact (re-export the model)")
    model = build_model(manifest.architecture, manifest.preprocessing.resize_to, len(manifest.classes))
    try:
        model.load_state_dict(load_file(weights))
    except RuntimeError as error:
        raise ModelDirError(f"{weights} does not fit {manifest.architecture} with "
                            f"{len(manifest.classes)} classes: {error}") from None
    model.requires_grad_(False)
    return model.to(device).eval()
