"""Export a trained model to TorchScript, ONNX and safetensors weights, prove that they agree with it, write the
manifest. A model directory is built from a training checkpoint (several of one run averaged, or mixed with their
parent: training/soup.py) or from shipped fp16 weights with their card (training/shipped.py)."""

import datetime
import importlib.metadata
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from schemas.labels import CLASSES
from schemas.manifest import (
    AveragedCheckpoint,
    EvaluationMetrics,
    InputSpec,
    Manifest,
    Preprocessing,
    QuantizationInfo,
    TrainingConfig,
    WeightsSource,
)
from service.runtime.architectures import MEAN, STD, FerNet, architecture_table, build_model
from service.runtime.backends import load_torchscript
from service.runtime.modeldir import RUN_FILES, Artifact, add_artifact, artifact_info, load_manifest, write_manifest
from training.calibration import calibrate_missing, record_calibration
from training.data import has_split, load_split
from training.errors import TrainingError
from training.shipped import INT8_CALIBRATION_SUFFIX, beside, card_calibrations, card_path, load_shipped_weights
from training.soup import average_weights, interpolate_with_parent, recompute_batch_norm

ONNX_OPSET = 18
PARITY_TOLERANCE = 1e-4


MEASURED = (Artifact.METRICS, Artifact.CONFUSION_MATRIX, Artifact.CONFUSION_PLOT)  # of the exported weights


class ExportError(TrainingError):
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
    """Max |difference| of probabilities between eager, TorchScript, ONNX Runtime and the eager model rebuilt
    from the safetensors weights, on `images`."""
    import onnxruntime

    batch = images.unsqueeze(1).contiguous()
    with torch.no_grad():
        eager = model(batch).numpy()
        scripted = load_torchscript(out / Artifact.TORCHSCRIPT.file, torch.device("cpu"))(batch).numpy()
        rebuilt = build_model(*_shape_of(model))
        rebuilt.load_state_dict(load_file(out / Artifact.WEIGHTS.file))
        from_weights = rebuilt.eval()(batch).numpy()
    session = onnxruntime.InferenceSession(str(out / Artifact.ONNX.file), providers=["CPUExecutionProvider"])
    onnx = session.run(None, {"images": batch.numpy()})[0]
    differences = {"torchscript": float(np.abs(scripted - eager).max()), "onnx": float(np.abs(onnx - eager).max()),
                   "weights": float(np.abs(from_weights - eager).max())}
    failing = {name: value for name, value in differences.items() if value > tolerance}
    if failing:
        raise ExportError(f"export parity failed on {len(batch)} images: max |probability difference| "
                          f"{failing} exceeds {tolerance}")
    return differences


def _shape_of(model: FerNet) -> tuple[str, int, int]:
    return model.architecture, model.image_size, model.num_classes


def export_model(model: FerNet, out: Path, config: TrainingConfig, input_size: int, sample_images: torch.Tensor,
                 validation: EvaluationMetrics | None, classes: list[str], tta: str = "none",
                 weights_source: WeightsSource | None = None) -> Manifest:
    """Write model.pt, model.onnx, weights.safetensors, architecture.json and manifest.json into `out`, verified."""
    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, out / Artifact.WEIGHTS.file)
    script(model).save(str(out / Artifact.TORCHSCRIPT.file))
    export_onnx(model, sample_images[:2].unsqueeze(1), out / Artifact.ONNX.file)
    differences = verify_parity(model, out, sample_images)
    print(f"export verified on {len(sample_images)} images: max |probability difference| {differences}")
    rows = architecture_table(model, input_size)
    (out / Artifact.ARCHITECTURE.file).write_text(json.dumps(rows, indent=1))

    listed = (Artifact.TORCHSCRIPT, Artifact.ONNX, Artifact.WEIGHTS, Artifact.FAITHFULNESS, *RUN_FILES)
    artifacts = {artifact: artifact_info(out, artifact.file) for artifact in listed if (out / artifact.file).is_file()}
    manifest = Manifest(
        version=artifacts[Artifact.TORCHSCRIPT].sha256[:12],
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        architecture=model.architecture, classes=list(classes),
        input=InputSpec(height=input_size, width=input_size),
        preprocessing=Preprocessing(resize_to=config.image_size, mean=MEAN, std=STD), tta=tta,
        training=config, weights_source=weights_source, validation=validation, artifacts=artifacts,
        libraries=_library_versions("torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu"),
    )
    write_manifest(out, manifest)
    return manifest


def _library_versions(*names: str) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _sample_images(source: str, input_size: int) -> torch.Tensor:
    """Real images for the parity check: the data's validation split where it has one."""
    split = "val" if has_split(source, "val") else "train"
    return load_split(source, split, input_size).images[:64]


def export_checkpoint(checkpoints: list[Path], out: Path, data: str | None = None, tta: str | None = None,
                      parent_weight: float = 0.0, bn_faces: int = 0) -> Manifest:
    """The `export` command: a checkpoint of `train` to verified artifacts in `out`. Several checkpoints of one run
    (e.g. its best.pt and the last epoch's checkpoint.pt) are averaged weight by weight, a uniform "model soup"
    (Wortsman et al. 2022). With `parent_weight` w > 0 the result is interpolated with the shipped weights the run
    was fine-tuned from, (1 - w) x the run's + w x the parent's (WiSE-FT, Wortsman et al. 2022: it keeps what the
    fine-tuning gained and much of what it lost). With `bn_faces` N > 0 its batch-norm statistics are recomputed on
    N training faces through the TTA's views. Mixed weights are evaluated anew on the data's validation split."""
    states = [torch.load(path, map_location="cpu", weights_only=True) for path in checkpoints]
    state = states[0]
    config = TrainingConfig(**state["config"])
    # Checkpoints from before the architecture registry hold the report's ResNet18 over FER2013's classes.
    architecture, classes = state.get("architecture", "resnet18"), state.get("classes", list(CLASSES))
    model = build_model(architecture, config.image_size, len(classes))
    run_dir = checkpoints[0].parent
    metrics_file = run_dir / Artifact.METRICS.file
    run_metrics = EvaluationMetrics.model_validate_json(metrics_file.read_text()) if metrics_file.is_file() else None
    mixed = len(states) > 1 or parent_weight > 0 or bn_faces > 0
    tta = tta or (run_metrics.tta if run_metrics and not mixed else config.tta)
    source = data or config.data
    weights = state["model"] if len(states) == 1 else average_weights(checkpoints, states)
    if mixed:  # which checkpoints went in
        config = config.model_copy(update={"averaged": [
            AveragedCheckpoint(file=str(path), epoch=other["epoch"] + 1, weights=other.get("weights", "raw"),
                               val_accuracy=other.get("val_accuracy")) for path, other in zip(checkpoints, states)]})
    if parent_weight > 0:
        weights = interpolate_with_parent(weights, config, parent_weight, checkpoints[0])
        config = config.model_copy(update={"parent_weight": parent_weight})
    model.load_state_dict(weights)
    if bn_faces > 0:
        if not has_split(source, "train"):
            raise TrainingError(f"--bn-faces: {source} has no training split to recompute batch-norm statistics on")
        train_faces = load_split(source, "train", state["input_size"]).images
        picked = torch.randperm(len(train_faces), generator=torch.Generator().manual_seed(config.seed))[:bn_faces]
        recompute_batch_norm(model, train_faces[picked], tta)
        config = config.model_copy(update={"batch_norm_faces": len(picked)})
    # The run's own figures are of its best.pt; mixed weights' are measured below.
    validation = None if mixed else run_metrics
    measured_here = MEASURED if mixed else ()
    for artifact in measured_here:  # an earlier export's figures in `out` are not the mixed weights'
        (out / artifact.file).unlink(missing_ok=True)
    if out.resolve() != run_dir.resolve():
        for artifact in RUN_FILES:
            if (run_dir / artifact.file).is_file() and artifact not in measured_here:
                out.mkdir(parents=True, exist_ok=True)
                (out / artifact.file).write_bytes((run_dir / artifact.file).read_bytes())
    sample = _sample_images(source, state["input_size"])
    manifest = export_model(model, out, config, state["input_size"], sample, validation, classes, tta)
    if mixed:
        _evaluate_mixed(out, manifest, source)
    if calibrate_missing(out, source):  # these weights' temperature for each TTA the service can serve
        print(f"not calibrated: {source} has no validation split to fit a temperature on (pass --data)")
    return load_manifest(out)


def _evaluate_mixed(out: Path, manifest: Manifest, data: str) -> Manifest:
    """Mixed weights' (averaged, interpolated or given new batch-norm statistics) validation metrics and confusion
    matrix, with the recorded TTA, into the directory."""
    from training.evaluate import evaluate_model_dir
    from training.plots import plot_confusion

    if not has_split(data, "val"):  # nothing held out to measure the average on
        return manifest
    result = evaluate_model_dir(out, data, "val")
    confusion = result.pop("confusion_matrix")
    validation = EvaluationMetrics(**{name: value for name, value in result.items()
                                      if name in EvaluationMetrics.model_fields})
    (out / Artifact.METRICS.file).write_text(validation.model_dump_json(indent=2))
    (out / Artifact.CONFUSION_MATRIX.file).write_text(json.dumps(confusion, indent=2))
    plot_confusion(confusion, out / Artifact.CONFUSION_PLOT.file, title=f"val ({validation.samples} images)")
    manifest.validation = validation
    for artifact in MEASURED:
        add_artifact(out, manifest, artifact)  # each rewrites the manifest
    return manifest


def export_weights(weights: Path, out: Path, data: str | None = None) -> Manifest:
    """The `export --weights` command: a verified model directory from shipped weights and their card."""
    model, card = load_shipped_weights(weights)
    out.mkdir(parents=True, exist_ok=True)
    for artifact, content in ((Artifact.HISTORY, card["history"]), (Artifact.CONFUSION_MATRIX, card["confusion_matrix"]),
                              (Artifact.METRICS, card["validation"]), (Artifact.FAITHFULNESS, card.get("faithfulness"))):
        if content:  # measured on these weights in fp32 when they were shipped
            (out / artifact.file).write_text(json.dumps(content, indent=1))
    if card["history"]:
        from training.plots import plot_history

        plot_history(card["history"], out / Artifact.HISTORY_PLOT.file)
    input_size = card["input_size"]
    # Parity is checked on real faces when the data is at hand, else on the synthetic generator's.
    sample = _sample_images(data, input_size) if data else load_split("synthetic:70", "val", input_size).images
    validation = EvaluationMetrics(**card["validation"]) if card["validation"] else None
    source = WeightsSource(file=str(weights), sha256=card["sha256"], model_card=str(card_path(weights)))
    export_model(model, out, TrainingConfig(**card["training"]), input_size, sample, validation, card["classes"],
                 card["tta"], source)
    record_calibration(out, card_calibrations(card))  # fitted on these weights when they were shipped
    missing = calibrate_missing(out, data)  # TTAs the card has no temperature for: fitted here where data is given
    if missing:
        print(f"not calibrated for {', '.join(missing)} TTA: {weights.name}'s card has no temperature for it and no "
              "--data with a validation split was given to fit one")
    cache = beside(weights, INT8_CALIBRATION_SUFFIX)
    if card.get("quantization") and not cache.is_file():
        print(f"no int8 model: {weights.name}'s card measured one, but {cache.name} is not beside the weights")
    elif card.get("quantization"):  # the int8 model measured when the weights were shipped
        from training.quantize import QuantizationRefused, requantize_model_dir

        try:
            requantize_model_dir(out, cache, QuantizationInfo(**card["quantization"]))
        except QuantizationRefused as refused:
            print(f"no int8 model: {refused}")
    return load_manifest(out)
