"""Export a trained model to TorchScript and ONNX, prove that both agree with it, write the manifest."""

import datetime
import importlib.metadata
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from schemas.manifest import MANIFEST_FILE, EvaluationMetrics, InputSpec, Manifest, Preprocessing, TrainingConfig
from service.artifacts import file_sha256, load_manifest
from service.backends import load_torchscript
from service.explain import Explainer
from service.model import DEFAULT_FILTERS, FilterRequest, compute_filters, save_precomputed
from training.data import has_split, load_split
from training.model import MEAN, STD, FerNet, architecture_table, build_model

TORCHSCRIPT_FILE = "model.pt"
ONNX_FILE = "model.onnx"
ONNX_OPSET = 18
PARITY_TOLERANCE = 1e-4
# Files a run writes beside the models; each one present is hashed into the manifest under its role.
REPORT_FILES = {
    "history": "history.json", "history_csv": "history.csv", "history_plot": "history.png",
    "confusion_matrix": "confusion_matrix.json", "confusion_plot": "confusion_matrix.png",
    "metrics": "metrics.json", "architecture": "architecture.json",
}


class ExportError(RuntimeError):
    """The exported models do not compute what the trained model computes."""


def export_onnx(model: FerNet, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["images"], output_names=["probabilities"],
                          dynamic_shapes={"images": {0: batch}}, opset_version=ONNX_OPSET, dynamo=True,
                          external_data=False, verbose=False)


def script(model: FerNet) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream; it is the contract here
        return torch.jit.script(model)


def verify_parity(model: FerNet, out: Path, images: torch.Tensor, tolerance: float = PARITY_TOLERANCE) -> dict:
    """Max |difference| of probabilities between eager, TorchScript and ONNX Runtime on `images`."""
    import onnxruntime

    batch = images.unsqueeze(1).contiguous()
    with torch.no_grad():
        eager = model(batch).numpy()
        scripted = load_torchscript(out / TORCHSCRIPT_FILE, torch.device("cpu"))(batch).numpy()
    session = onnxruntime.InferenceSession(str(out / ONNX_FILE), providers=["CPUExecutionProvider"])
    onnx = session.run(None, {"images": batch.numpy()})[0]
    differences = {"torchscript": float(np.abs(scripted - eager).max()), "onnx": float(np.abs(onnx - eager).max())}
    failing = {name: value for name, value in differences.items() if value > tolerance}
    if failing:
        raise ExportError(f"export parity failed on {len(batch)} images: max |probability difference| "
                          f"{failing} exceeds {tolerance}")
    return differences


def export_model(model: FerNet, out: Path, config: TrainingConfig, input_size: int, sample_images: torch.Tensor,
                 validation: EvaluationMetrics | None) -> Manifest:
    """Write model.pt, model.onnx, architecture.json and manifest.json into `out`, verified."""
    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    script(model).save(str(out / TORCHSCRIPT_FILE))
    export_onnx(model, sample_images[:2].unsqueeze(1), out / ONNX_FILE)
    differences = verify_parity(model, out, sample_images)
    print(f"export verified on {len(sample_images)} images: max |probability difference| {differences}")
    rows = architecture_table(model, input_size)
    (out / REPORT_FILES["architecture"]).write_text(json.dumps([row.model_dump() for row in rows], indent=1))

    files = {"torchscript": TORCHSCRIPT_FILE, "onnx": ONNX_FILE, **REPORT_FILES}
    artifacts = {role: {"path": name, "sha256": file_sha256(out / name), "bytes": (out / name).stat().st_size}
                 for role, name in files.items() if (out / name).is_file()}
    manifest = Manifest(
        version=artifacts["torchscript"]["sha256"][:12],
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        input=InputSpec(height=input_size, width=input_size),
        preprocessing=Preprocessing(resize_to=config.image_size, mean=MEAN, std=STD),
        training=config, validation=validation, artifacts=artifacts,
        libraries=_library_versions("torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu"),
    )
    (out / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
    return manifest


def _library_versions(*names: str) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def export_checkpoint(checkpoint: Path, out: Path, data: str | None = None) -> Manifest:
    """The `export` command: a checkpoint of `train` to verified artifacts in `out`."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    config = TrainingConfig(**state["config"])
    model = build_model(config.image_size)
    model.load_state_dict(state["model"])
    metrics_file = checkpoint.parent / REPORT_FILES["metrics"]
    validation = EvaluationMetrics.model_validate_json(metrics_file.read_text()) if metrics_file.is_file() else None
    if out.resolve() != checkpoint.parent.resolve():
        for name in REPORT_FILES.values():
            if (checkpoint.parent / name).is_file():
                out.mkdir(parents=True, exist_ok=True)
                (out / name).write_bytes((checkpoint.parent / name).read_bytes())
    source = data or config.data
    split = "val" if has_split(source, "val") else "train"
    sample = load_split(source, split, state["input_size"]).images[:64]
    return export_model(model, out, config, state["input_size"], sample, validation)


def precompute_filters(model_dir: Path) -> int:
    """Store the default filter visualisations of every convolution, so the service's first call is fast."""
    manifest = load_manifest(model_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    explainer = Explainer(load_torchscript(model_dir / manifest.artifacts["torchscript"].path, device), device)
    requests = [FilterRequest.make(explainer, "conv1", DEFAULT_FILTERS, "weights")]
    requests += [FilterRequest.make(explainer, layer, DEFAULT_FILTERS) for layer in explainer.layers]
    for request in requests:
        save_precomputed(model_dir, manifest.version, request, compute_filters(explainer, request))
    return len(requests)
