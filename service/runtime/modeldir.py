"""Reading a model directory made by `python -m training`: the manifest and the files it vouches for."""

import hashlib
import json
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from schemas.manifest import MANIFEST_FILE, ArtifactInfo, Manifest
from service.runtime.architectures import FerNet, build_model


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
    partial.replace(path)


def write_manifest(model_dir: Path, manifest: Manifest) -> None:
    write_atomically(Path(model_dir) / MANIFEST_FILE, manifest.model_dump_json(indent=2))


def artifact_info(model_dir: Path, filename: str) -> ArtifactInfo:
    path = Path(model_dir) / filename
    return ArtifactInfo(path=filename, sha256=file_sha256(path), bytes=path.stat().st_size)


def add_artifact(model_dir: Path, manifest: Manifest, role: str, filename: str) -> None:
    """List a file written into the directory under `role`, so the manifest vouches for it (sha256)."""
    manifest.artifacts[role] = artifact_info(model_dir, filename)
    write_manifest(model_dir, manifest)


def read_json(model_dir: Path, manifest: Manifest, role: str, default):
    """A report file (history, confusion matrix, architecture) when the run exported it."""
    artifact = manifest.artifacts.get(role)
    return json.loads((Path(model_dir) / artifact.path).read_text()) if artifact else default


def load_eager_model(model_dir: Path, manifest: Manifest, device: torch.device) -> FerNet:
    """The network rebuilt by name from the registry with the directory's verified fp32 weights, frozen: hooks
    work on it and explanations take gradients with respect to their inputs only."""
    weights = manifest.artifacts.get("weights")
    if weights is None:
        raise ModelDirError(f"{model_dir}: the manifest lists no `weights` artifact (re-export the model)")
    model = build_model(manifest.architecture, manifest.preprocessing.resize_to, len(manifest.classes))
    try:
        model.load_state_dict(load_file(Path(model_dir) / weights.path))
    except RuntimeError as error:
        raise ModelDirError(f"{Path(model_dir) / weights.path} does not fit {manifest.architecture} with "
                            f"{len(manifest.classes)} classes: {error}") from None
    model.requires_grad_(False)
    return model.to(device).eval()
