"""Export a trained model to TorchScript, ONNX and safetensors weights, prove that they agree with it, write the
manifest. A model directory is built from a training checkpoint or from shipped fp16 weights with their card."""

import datetime
import importlib.metadata
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from schemas.labels import CLASSES
from schemas.manifest import (
    AveragedCheckpoint,
    EvaluationMetrics,
    InputSpec,
    Manifest,
    Preprocessing,
    TrainingConfig,
    WeightsSource,
)
from service.runtime.architectures import MEAN, STD, FerNet, architecture_table, build_model
from service.runtime.backends import load_torchscript
from service.runtime.explain import Explainer
from service.runtime.filters import DEFAULT_FILTERS, FilterRequest, FilterStore, compute_filters
from service.runtime.modeldir import (
    add_artifact,
    artifact_info,
    file_sha256,
    load_eager_model,
    load_manifest,
    write_manifest,
)
from training.data import DataError, has_split, load_split

TORCHSCRIPT_FILE = "model.pt"
ONNX_FILE = "model.onnx"
FAITHFULNESS_FILE = "faithfulness.json"  # written by --explanations
WEIGHTS_FILE = "weights.safetensors"  # fp32, what the service rebuilds the eager model from for explanations
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


class WeightsError(DataError):
    """Shipped weights are missing, truncated, tampered with or do not fit their card."""


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
        scripted = load_torchscript(out / TORCHSCRIPT_FILE, torch.device("cpu"))(batch).numpy()
        rebuilt = build_model(*_shape_of(model))
        rebuilt.load_state_dict(load_file(out / WEIGHTS_FILE))
        from_weights = rebuilt.eval()(batch).numpy()
    session = onnxruntime.InferenceSession(str(out / ONNX_FILE), providers=["CPUExecutionProvider"])
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
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, out / WEIGHTS_FILE)
    script(model).save(str(out / TORCHSCRIPT_FILE))
    export_onnx(model, sample_images[:2].unsqueeze(1), out / ONNX_FILE)
    differences = verify_parity(model, out, sample_images)
    print(f"export verified on {len(sample_images)} images: max |probability difference| {differences}")
    rows = architecture_table(model, input_size)
    (out / REPORT_FILES["architecture"]).write_text(json.dumps(rows, indent=1))

    files = {"torchscript": TORCHSCRIPT_FILE, "onnx": ONNX_FILE, "weights": WEIGHTS_FILE,
             "faithfulness": FAITHFULNESS_FILE, **REPORT_FILES}
    artifacts = {role: artifact_info(out, name) for role, name in files.items() if (out / name).is_file()}
    manifest = Manifest(
        version=artifacts["torchscript"].sha256[:12],
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
                      parent_weight: float = 0.0) -> Manifest:
    """The `export` command: a checkpoint of `train` to verified artifacts in `out`. Several checkpoints of one run
    (e.g. its best.pt and the last epoch's checkpoint.pt) are averaged weight by weight, a uniform "model soup"
    (Wortsman et al. 2022). With `parent_weight` w > 0 the result is interpolated with the shipped weights the run
    was fine-tuned from, (1 - w) x the run's + w x the parent's (WiSE-FT, Wortsman et al. 2022: it keeps what the
    fine-tuning gained and much of what it lost). Mixed weights are evaluated anew on the data's validation split."""
    states = [torch.load(path, map_location="cpu", weights_only=True) for path in checkpoints]
    state = states[0]
    config = TrainingConfig(**state["config"])
    # Checkpoints from before the architecture registry hold the report's ResNet18 over FER2013's classes.
    architecture, classes = state.get("architecture", "resnet18"), state.get("classes", list(CLASSES))
    model = build_model(architecture, config.image_size, len(classes))
    mixed = len(states) > 1 or parent_weight > 0
    weights = state["model"] if len(states) == 1 else average_weights(checkpoints, states)
    if mixed:  # which checkpoints went in
        config = config.model_copy(update={"averaged": [
            AveragedCheckpoint(file=str(path), epoch=other["epoch"] + 1, weights=other.get("weights", "raw"),
                               val_accuracy=other.get("val_accuracy")) for path, other in zip(checkpoints, states)]})
    if parent_weight > 0:
        weights = interpolate_with_parent(weights, config, parent_weight, checkpoints[0])
        config = config.model_copy(update={"parent_weight": parent_weight})
    model.load_state_dict(weights)
    run_dir = checkpoints[0].parent
    metrics_file = run_dir / REPORT_FILES["metrics"]
    # The run's own figures are of its best.pt; mixed weights' are measured below.
    validation = EvaluationMetrics.model_validate_json(metrics_file.read_text()) \
        if metrics_file.is_file() and not mixed else None
    measured_here = ("metrics", "confusion_matrix", "confusion_plot") if mixed else ()
    for role in measured_here:  # an earlier export's figures in `out` are not the mixed weights'
        (out / REPORT_FILES[role]).unlink(missing_ok=True)
    if out.resolve() != run_dir.resolve():
        for role, name in REPORT_FILES.items():
            if (run_dir / name).is_file() and role not in measured_here:
                out.mkdir(parents=True, exist_ok=True)
                (out / name).write_bytes((run_dir / name).read_bytes())
    sample = _sample_images(data or config.data, state["input_size"])
    manifest = export_model(model, out, config, state["input_size"], sample, validation, classes,
                            tta or (validation.tta if validation else config.tta))
    return _evaluate_mixed(out, manifest, data or config.data) if mixed else manifest


def average_weights(checkpoints: list[Path], states: list[dict]) -> dict[str, torch.Tensor]:
    """The mean of the checkpoints' weights (integer buffers, such as batch-norm's step counts, from the first);
    only checkpoints of one run (the same training configuration) are averaged."""
    def described(state: dict) -> dict:
        # settings added since a checkpoint was written take their defaults, as on --resume
        return {"config": TrainingConfig(**state["config"]).model_dump(),
                **{key: state.get(key) for key in ("architecture", "classes", "input_size")}}

    first = described(states[0])
    for path, other in zip(checkpoints[1:], states[1:]):
        described_other = described(other)
        for key, mine in first.items():
            theirs = described_other[key]
            if theirs != mine:
                differing = sorted(name for name in mine if mine[name] != theirs[name]) if key == "config" else []
                raise WeightsError(f"{path}: not a checkpoint of the same run as {checkpoints[0]} (its {key} "
                                   f"differs{': ' + ', '.join(differing) if differing else ''}); only one run's "
                                   "checkpoints are averaged")
    return weighted_sum([other["model"] for other in states], [1 / len(states)] * len(states))


def interpolate_with_parent(weights: dict[str, torch.Tensor], config: TrainingConfig, parent_weight: float,
                            checkpoint: Path) -> dict[str, torch.Tensor]:
    """(1 - w) x `weights` + w x the weights the run was fine-tuned from, which must still be the file the run
    recorded (its sha256); integer buffers stay the run's."""
    if config.parent is None:
        raise WeightsError(f"{checkpoint}: its run was not fine-tuned from shipped weights (--weights "
                           f"{config.weights}), so it has no parent to interpolate with (--parent-weight)")
    parent_file = Path(config.weights)  # where the run read its parent (the card names only the file)
    parent, card = load_shipped_weights(parent_file)
    if card["sha256"] != config.parent.sha256:
        raise WeightsError(f"{parent_file}: sha256 {card['sha256'][:16]}... is not the {config.parent.sha256[:16]}... "
                           f"the run of {checkpoint} was fine-tuned from (the file was replaced since); put "
                           "those weights back at that path, relative to where the run was started")
    return weighted_sum([weights, parent.state_dict()], [1 - parent_weight, parent_weight])


def weighted_sum(weights: list[dict[str, torch.Tensor]], shares: list[float]) -> dict[str, torch.Tensor]:
    """share_1 x weights_1 + share_2 x weights_2 + ..., weight by weight in float64; integer buffers (such as
    batch-norm's step counts) are the first's."""
    first = weights[0]
    return {name: sum(share * other[name].double() for other, share in zip(weights, shares)).to(tensor.dtype)
            if tensor.is_floating_point() else tensor for name, tensor in first.items()}


def _evaluate_mixed(out: Path, manifest: Manifest, data: str) -> Manifest:
    """Averaged or interpolated weights' validation metrics and confusion matrix, with the recorded TTA, into the
    directory."""
    from training.evaluate import evaluate_model_dir
    from training.plots import plot_confusion

    if not has_split(data, "val"):  # nothing held out to measure the average on
        return manifest
    result = evaluate_model_dir(out, data, "val")
    confusion = result.pop("confusion_matrix")
    validation = EvaluationMetrics(**{name: value for name, value in result.items()
                                      if name in EvaluationMetrics.model_fields})
    (out / REPORT_FILES["metrics"]).write_text(validation.model_dump_json(indent=2))
    (out / REPORT_FILES["confusion_matrix"]).write_text(json.dumps(confusion, indent=2))
    plot_confusion(confusion, out / REPORT_FILES["confusion_plot"], title=f"val ({validation.samples} images)")
    manifest.validation = validation
    for role in ("metrics", "confusion_matrix", "confusion_plot"):
        add_artifact(out, manifest, role, REPORT_FILES[role])  # each rewrites the manifest
    return manifest


# --- shipped weights --------------------------------------------------------------------------------
# The card beside `NAME.safetensors` is `NAME.card.json`: architecture, classes, input size, training config,
# validation metrics, history, confusion matrix, TTA and the sha256 of the weights file it vouches for.

def card_path(weights: Path) -> Path:
    return weights.with_name(weights.name.removesuffix(".safetensors") + ".card.json")


def save_shipped_weights(model_dir: Path, weights: Path) -> dict:
    """fp16 safetensors of a model directory's weights, and its card (the figures of that directory)."""
    manifest = load_manifest(model_dir)
    state = load_file(model_dir / manifest.artifacts["weights"].path)
    half = {name: tensor.half() if tensor.is_floating_point() else tensor for name, tensor in state.items()}
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file(half, weights)
    read = lambda role, default: json.loads((model_dir / manifest.artifacts[role].path).read_text()) \
        if role in manifest.artifacts else default  # noqa: E731
    card = {"file": weights.name, "sha256": file_sha256(weights), "bytes": weights.stat().st_size,
            "architecture": manifest.architecture, "classes": manifest.classes, "input_size": manifest.input.height,
            "tta": manifest.tta, "training": manifest.training.model_dump(),
            "validation": manifest.validation.model_dump() if manifest.validation else None,
            "history": read("history", []), "confusion_matrix": read("confusion_matrix", None),
            "faithfulness": read("faithfulness", None)}
    card_path(weights).write_text(json.dumps(card, indent=1))
    return card


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


def export_weights(weights: Path, out: Path, data: str | None = None) -> Manifest:
    """The `export --weights` command: a verified model directory from shipped weights and their card."""
    model, card = load_shipped_weights(weights)
    out.mkdir(parents=True, exist_ok=True)
    files = {**REPORT_FILES, "faithfulness": FAITHFULNESS_FILE}
    for role, content in (("history", card["history"]), ("confusion_matrix", card["confusion_matrix"]),
                          ("metrics", card["validation"]), ("faithfulness", card.get("faithfulness"))):
        if content:  # measured on these weights in fp32 when they were shipped
            (out / files[role]).write_text(json.dumps(content, indent=1))
    if card["history"]:
        from training.plots import plot_history

        plot_history(card["history"], out / REPORT_FILES["history_plot"])
    input_size = card["input_size"]
    # Parity is checked on real faces when the data is at hand, else on the synthetic generator's.
    sample = _sample_images(data, input_size) if data else load_split("synthetic:70", "val", input_size).images
    validation = EvaluationMetrics(**card["validation"]) if card["validation"] else None
    source = WeightsSource(file=str(weights), sha256=card["sha256"], model_card=str(card_path(weights)))
    return export_model(model, out, TrainingConfig(**card["training"]), input_size, sample, validation,
                        card["classes"], card["tta"], source)


def measure_explanations(model_dir: Path, data: str, count: int, store: bool = True) -> list[dict]:
    """The faithfulness table of every saliency method on `count` validation faces; with `store`, kept in the
    directory (role `faithfulness`, so the manifest vouches for it and the service shows it)."""
    from training.faithfulness import faithfulness_table

    manifest = load_manifest(model_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    explainer = Explainer(load_eager_model(model_dir, manifest, device), manifest.architecture, device)
    split = "val" if has_split(data, "val") else "train"
    images = load_split(data, split, manifest.input.height).images[:count].unsqueeze(1).to(device)
    rows = faithfulness_table(explainer, images)
    if not store:
        return rows
    path = Path(model_dir) / FAITHFULNESS_FILE
    path.write_text(json.dumps({"data": data, "split": split, "rows": rows}, indent=1))
    add_artifact(model_dir, manifest, "faithfulness", FAITHFULNESS_FILE)
    return rows


def precompute_filters(model_dir: Path) -> int:
    """Store the default filter visualisations of every convolution, so the service's first call is fast."""
    manifest = load_manifest(model_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    explainer = Explainer(load_eager_model(model_dir, manifest, device), manifest.architecture, device)
    store = FilterStore(model_dir, manifest.version, capacity=0)
    requests = [FilterRequest.make(explainer, "conv1", DEFAULT_FILTERS, "weights")]
    requests += [FilterRequest.make(explainer, layer, DEFAULT_FILTERS) for layer in explainer.layers]
    for request in requests:
        store.save(request, compute_filters(explainer, request))
    return len(requests)
