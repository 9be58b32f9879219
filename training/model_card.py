"""The model card that ships beside the weights: measured on the data (with and without TTA, and the fp16
weights themselves), written as JSON (read by `export --weights`) and as Markdown (read by people)."""

import json
import tempfile
from pathlib import Path

from service.runtime.modeldir import Artifact, load_manifest
from training.calibration import calibrate_missing
from training.evaluate import evaluate_model_dir
from training.export import export_weights
from training.quantize import MAX_SERVABLE_GAP, QuantizationRefused, quantize_model_dir
from training.shipped import INT8_CALIBRATION_SUFFIX, beside, card_calibrations, card_path, save_shipped_weights
from training.options import command as training_command

RELIABILITY_SUFFIX = ".reliability.png"  # the calibration's diagram beside the weights
LIMITS = """- Trained on FER2013: 48x48 grey crops of mostly frontal faces from web searches. Photos go through the
  service's face detector first; profiles, occlusions, strong head turns and non-face images are outside
  what the model has seen.
- Seven posed-or-spontaneous expression classes, unevenly represented (disgust has about 1.5 % of the
  training images); accuracy differs a lot by class (see the table).
- FER2013's licence is for research: check it before any other use. The model inherits the biases of its
  data (age, ethnicity and gender are not balanced or recorded)."""


def ship(model_dir: Path, weights: Path, data: str) -> dict:
    """Write fp16 weights and their card, with accuracy measured on `data`'s validation split: the directory
    (fp32) with its TTA and without, and the fp16 weights exported back into a directory."""
    calibrate_missing(model_dir, data)  # a directory exported before each TTA had its temperature
    card = save_shipped_weights(model_dir, weights)
    fp32 = evaluate_model_dir(model_dir, data)
    plain = evaluate_model_dir(model_dir, data, tta="none")
    with tempfile.TemporaryDirectory() as scratch:
        shipped = Path(scratch) / "fp16"
        export_weights(weights, shipped, data)
        fp16 = evaluate_model_dir(shipped, data)
        if load_manifest(model_dir).quantization is not None:
            # Measured on the int8 model of the weights as shipped (fp16), which `export --weights` makes again
            # from the calibration shipped beside them.
            try:
                card["quantization"] = quantize_model_dir(shipped, data).model_dump()
                beside(weights, INT8_CALIBRATION_SUFFIX).write_bytes(
                    (shipped / Artifact.INT8_CALIBRATION.file).read_bytes())
            except QuantizationRefused as refused:
                print(f"shipped without an int8 model: {refused}")
    card["evaluation"] = {"data": data, "split": fp32["split"], "samples": fp32["samples"], "tta": fp32["tta"],
                          "accuracy": fp32["accuracy"], "accuracy_without_tta": plain["accuracy"],
                          "accuracy_fp16_weights": fp16["accuracy"], "macro_f1": fp32["macro_f1"],
                          "per_class": fp32["per_class"], "confusion_matrix": fp32["confusion_matrix"]}
    card_path(weights).write_text(json.dumps(card, indent=1))
    diagram = Path(model_dir) / Artifact.RELIABILITY_PLOT.file
    if diagram.is_file():
        beside(weights, RELIABILITY_SUFFIX).write_bytes(diagram.read_bytes())
    beside(weights, ".md").write_text(render(card))
    return card


def calibration_section(card: dict) -> str:
    calibrations = card_calibrations(card)
    if not calibrations:
        return "Not calibrated: the probabilities are as the network gives them."
    served = [calibration for calibration in calibrations if calibration.tta == card["tta"]]
    rows = "\n".join(
        f"| `{each.tta}`{' (served)' if each in served else ''} | {each.temperature:.3f} | {each.samples} "
        f"{each.split} | {each.ece_before:.4f} | **{each.ece_after:.4f}** | {each.nll_before:.4f} | "
        f"{each.nll_after:.4f} |" for each in served + [other for other in calibrations if other not in served])
    diagram = (f"\n\n![reliability diagram of the served TTA]({beside(Path(card['file']), RELIABILITY_SUFFIX).name})"
               if served else f"\n\nIts own `{card['tta']}` TTA is not calibrated: served as the network gives it.")
    return f"""The probabilities are temperature-scaled (Guo et al. 2017): softmax(log(p) / T) of the network's with the
TTA served, T fitted for each TTA the service can be set to (`FER_TTA`) by least negative log-likelihood on held-out
faces (FER2013 has no others here than PublicTest). No label changes.

| TTA | T | fitted on | ECE as given ({calibrations[0].bins} bins) | ECE calibrated | NLL as given | NLL calibrated |
| --- | --- | --- | --- | --- | --- | --- |
{rows}{diagram}"""


def quantization_section(card: dict) -> str:
    quantization = card.get("quantization")
    if not quantization:
        return "No int8 model was shipped with these weights: the service serves fp32."
    rows = [(f"`{quantization['tta']}` (served)", quantization["accuracy_fp32"], quantization["accuracy_int8"])]
    if quantization.get("accuracy_fp32_without_tta") is not None and quantization["tta"] != "none":
        rows.append(("none", quantization["accuracy_fp32_without_tta"], quantization["accuracy_int8_without_tta"]))
    table = "\n".join(f"| {tta} | {fp32 * 100:.2f} % | {int8 * 100:.2f} % | {(int8 - fp32) * 100:+.2f} |"
                       for tta, fp32, int8 in rows)
    verdict = (f"within {MAX_SERVABLE_GAP * 100:.1f} points of fp32 with the served TTA: **served by default on the "
               "CPU** (`FER_PRECISION=auto`; `FER_PRECISION=fp32` serves fp32)" if quantization["servable"] else
               f"more than {MAX_SERVABLE_GAP * 100:.1f} points from fp32 with the served TTA: served only when "
               "`FER_PRECISION=int8` asks for it")
    return f"""`export --weights` quantizes the ONNX model to int8 (ONNX Runtime, static QDQ, per-channel int8 weights,
uint8 activations) with the activation ranges shipped beside these weights
(`{beside(Path(card['file']), INT8_CALIBRATION_SUFFIX).name}`, calibrated on {quantization['calibration_images']}
faces of {quantization['split']}); measured on {quantization['samples']} faces of {quantization['split']}:

| TTA | fp32 | int8 | int8 - fp32 (points) |
| --- | --- | --- | --- |
{table}

The int8 model is {verdict}."""


def export_command(training: dict) -> str:
    """The export that mixed the run's weights, where it did: its checkpoints averaged (with what each scored
    alone), interpolated with its parent's weights, given batch-norm statistics of clean faces, or several."""
    averaged, share = training.get("averaged") or [], training.get("parent_weight") or 0
    bn_faces = training.get("batch_norm_faces") or 0
    if not averaged and not share:
        return ""
    steps = []
    if len(averaged) > 1:
        steps.append("the weights of " + ", ".join(
            f"epoch {c['epoch']} ({c['weights']}" + (f", {c['val_accuracy'] * 100:.2f} % alone without TTA)"
                                                    if c.get("val_accuracy") is not None else ")")
            for c in averaged) + " averaged")
    if share:
        steps.append(f"{share:g} of the parent's weights mixed in (WiSE-FT)")
    if bn_faces:
        steps.append(f"batch-norm statistics recomputed on {bn_faces} clean training faces through the TTA's views")
    checkpoints = " ".join(f"--checkpoint {c['file']}" for c in averaged)
    option = (f" --parent-weight {share:g}" if share else "") + (f" --bn-faces {bn_faces}" if bn_faces else "")
    return (f"\n# then {'; then '.join(steps)}\npython -m training export {checkpoints}{option} --out MODEL_DIR "
            "--save-weights NAME.safetensors")


def provenance_notes(weights: dict, card: dict) -> tuple[str, str]:
    """Of earlier shipped weights (a parent or a teacher): where they are now, if this file replaced them, and
    what their card measured."""
    replaced = ", in this repository's history before it was replaced in place" if weights["file"] == card["file"] \
        else ""
    accuracy = (f", {weights['accuracy'] * 100:.2f} % on `{weights['split']}` (TTA `{weights['tta']}`)"
                if weights.get("accuracy") is not None else "")
    return replaced, accuracy


def taught(card: dict) -> str:
    """The sentence naming the weights whose predictions this run distilled, where it had a teacher."""
    teacher, training = card["training"].get("teacher_weights"), card["training"]
    if not teacher:
        return ""
    replaced, accuracy = provenance_notes(teacher, card)
    return (f" The run that made it learnt from the labels and from the softened predictions of `{teacher['file']}` "
            f"(sha256 `{teacher['sha256'][:16]}…`{replaced}{accuracy}) on the same augmented faces: knowledge "
            f"distillation, weight {training['distill']:g}, temperature {training['distill_temperature']:g}.")


def lineage(card: dict) -> str:
    """How the weights came to be: from scratch, from a backbone, or fine-tuned from earlier shipped weights
    (recorded in the training config when each run began; each step's command, oldest first), and the teacher
    the last step distilled, if any."""
    steps, training = [], card["training"]
    while training.get("parent"):
        steps.append(training["parent"])
        training = training["parent"]["training"]
    start = "trained from scratch" if training["weights"] == "none" else f"trained from `{training['weights']}`"
    if not steps:
        return f"{start} on FER2013.{taught(card)}"
    text = f"{start} on FER2013, then fine-tuned; each step, oldest first:\n"
    for step in reversed(steps):
        replaced, accuracy = provenance_notes(step, card)
        size = step["training"]["image_size"]
        text += (f"\n1. `{step['file']}` (sha256 `{step['sha256'][:16]}…`{replaced}): {step['training']['epochs']} "
                 f"epochs at {size}x{size}, {step['training_seconds'] / 60:.0f} min{accuracy}\n\n"
                 f"   ```bash\n   {training_command(step['training'])}"
                 f"{export_command(step['training']).replace(chr(10), chr(10) + '   ')}\n   ```\n")
    return text + f"\n1. this file, fine-tuned from the last of them with the command below.{taught(card)}\n"


def render(card: dict) -> str:
    evaluation, training, history = card["evaluation"], card["training"], card["history"]
    seconds = sum(row.get("seconds", 0) for row in history)
    classes = card["classes"]
    per_class = "\n".join(f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
                          for name, m in evaluation["per_class"].items())
    counts = evaluation["confusion_matrix"]["counts"]
    matrix = "\n".join(f"| **{name}** | " + " | ".join(str(c) for c in row) + " |" for name, row in zip(classes, counts))
    return f"""# Model card: `{card['file']}`

ResNet18 (`{card['architecture']}` in the architecture registry: torchvision ResNet18, last layer
`Dropout(0.5)` + `Linear(512, {len(classes)})`) for facial expressions, {lineage(card)}

| | |
| --- | --- |
| file | `{card['file']}`, fp16 safetensors, {card['bytes'] / 1e6:.1f} MB |
| sha256 | `{card['sha256']}` |
| classes, in output order | {', '.join(f'{i} {name}' for i, name in enumerate(classes))} (FER2013's canonical order) |
| input | grey uint8 {card['input_size']}x{card['input_size']} face crops; the network sees {training['image_size']}x{training['image_size']} |
| data | FER2013 Training (28,709 images) for training; PublicTest (3,589) for every choice and figure here |
| epochs | {training['epochs']}{' (this step)' if card['training'].get('parent') else ''} |
| training time | {seconds / 60:.1f} min ({'this step; ' if card['training'].get('parent') else ''}{training['device']}, precision {training['precision']}) on {training.get('machine') or 'the machine named in docs/benchmarks.md'} |
| test-time augmentation | `{card['tta']}` (applied by `evaluate` and by the service) |

Command (from the repository root):

```bash
{training_command(training)}{export_command(training)}
```

## Accuracy on {evaluation['data']} {evaluation['split']} ({evaluation['samples']} faces)

| weights | TTA | accuracy |
| --- | --- | --- |
| fp32 (exported directory) | `{evaluation['tta']}` | **{evaluation['accuracy'] * 100:.2f} %** |
| fp32 | none | {evaluation['accuracy_without_tta'] * 100:.2f} % |
| fp16 (this file) | `{evaluation['tta']}` | {evaluation['accuracy_fp16_weights'] * 100:.2f} % |

Macro F1 {evaluation['macro_f1']:.3f}.

| class | precision | recall | F1 | faces |
| --- | --- | --- | --- | --- |
{per_class}

Confusion matrix (rows: true class, columns: predicted, in class order):

| | {' | '.join(classes)} |
| --- | {' | '.join('---' for _ in classes)} |
{matrix}

## Calibration

{calibration_section(card)}

## int8

{quantization_section(card)}

## Known limits

{LIMITS}
"""
