"""`python -m training report --model DIR [--data D] [--out report.html]`: the course report's five questions,
answered for any model directory in one self-contained HTML file (figures embedded), plus its three
derivations checked numerically on the real network. Without `--out` the page is stored in the model directory
(role `report`), where the service serves it at `GET /model/report` and its web page shows it: one implementation.

The model card first (what was trained, how, how well, how faithful its explanations are), then Q1 architecture,
Q2 training curves, Q3 confusion matrix and what it confuses, Q4 saliency maps of correctly and wrongly classified
faces of every class, Q5 what the last layer's filters respond to and conv1's kernels.
"""

import base64
import html
import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from schemas.manifest import Manifest  # noqa: E402
from service.runtime.explain import Explainer  # noqa: E402
from service.runtime.filters import DEFAULT_FILTERS, FilterRequest, compute_filters  # noqa: E402
from service.runtime.modeldir import (  # noqa: E402
    Artifact,
    add_artifact,
    load_eager_model,
    load_manifest,
    read_json,
    write_atomically,
)
from training.data import has_split, load_split  # noqa: E402
from training.plots import plot_confusion, plot_history, reliability_figure  # noqa: E402

REPORT_METHODS = ("vanilla", "smoothgrad", "gradcam")
FALLBACK_FACES = "synthetic:350"  # the generator's faces, where the model's data is not at hand


def _png(draw) -> str:
    """A matplotlib drawing as an embeddable data URL."""
    buffer = io.BytesIO()
    draw(buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _figure(figure) -> str:
    def save(buffer):
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        plt.close(figure)
    return _png(save)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table>{f'<thead><tr>{head}</tr></thead>' if header else ''}<tbody>{body}</tbody></table>"


# --- the derivations -------------------------------------------------------------------------------------

def check_convolution_sizes(model: nn.Module, input_size: int) -> list[dict]:
    """out = floor((W + 2P - K) / S) + 1, against the observed width of every convolution and pooling."""
    rows, hooks = [], []
    for name, module in model.net.named_modules():
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
            def check(module, inputs, output, name=name):
                pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
                width = inputs[0].shape[-1]
                kernel, stride, padding = pair(module.kernel_size)[1], pair(module.stride)[1], pair(module.padding)[1]
                rows.append({"layer": name, "W": width, "K": kernel, "S": stride, "P": padding,
                             "formula": math.floor((width + 2 * padding - kernel) / stride) + 1,
                             "observed": output.shape[-1]})
            hooks.append(module.register_forward_hook(check))
    with torch.no_grad():
        model(torch.zeros(1, 1, input_size, input_size, dtype=torch.uint8))
    for hook in hooks:
        hook.remove()
    return rows


def check_batchnorm_backward(model: nn.Module, faces: torch.Tensor) -> float:
    """The hand-derived backward pass of batch normalisation (training mode) on bn1's real input:
    dx = gamma / (N sigma) (N dy - sum(dy) - x_hat sum(dy x_hat)), against autograd. Largest |difference|."""
    net = model.net
    with torch.no_grad():
        x = net.conv1(model.preprocess(faces.float()))
    x = x.double().requires_grad_(True)
    gamma, beta = net.bn1.weight.detach().double(), net.bn1.bias.detach().double()
    out = F.batch_norm(x, None, None, gamma, beta, training=True, eps=net.bn1.eps)
    upstream = torch.randn_like(out, generator=torch.Generator().manual_seed(0))
    (autograd,) = torch.autograd.grad(out, x, upstream)
    with torch.no_grad():
        dims, count = (0, 2, 3), x.numel() / x.shape[1]
        mean, var = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
        sigma = (var + net.bn1.eps).sqrt()
        x_hat = (x - mean) / sigma
        g = gamma.view(1, -1, 1, 1)
        by_hand = g / (count * sigma) * (count * upstream - upstream.sum(dims, keepdim=True)
                                         - x_hat * (upstream * x_hat).sum(dims, keepdim=True))
    return float((by_hand - autograd).abs().max())


def check_softmax_cross_entropy(model: nn.Module, faces: torch.Tensor, labels: torch.Tensor) -> float:
    """d CE(softmax(z), y) / dz = softmax(z) - onehot(y) (per example), against autograd on the network's own
    logits. Largest |difference|."""
    with torch.no_grad():
        logits = model.logits(faces.float()).double()
    logits.requires_grad_(True)
    (autograd,) = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), logits)
    by_hand = torch.softmax(logits.detach(), 1) - F.one_hot(labels, logits.shape[1]).double()
    return float((by_hand - autograd).abs().max())


# --- the questions ---------------------------------------------------------------------------------------

def discussion(confusion: dict) -> str:
    """Q3 in words, from the numbers: the easiest and hardest classes, the most confused pairs."""
    classes, counts, rates = confusion["classes"], np.array(confusion["counts"]), np.array(confusion["normalized"])
    recall = {name: rates[i, i] for i, name in enumerate(classes)}
    easiest = sorted(recall, key=recall.get, reverse=True)[:2]
    hardest = sorted(recall, key=recall.get)[:2]
    pairs = sorted(((rates[i, j], i, j) for i in range(len(classes)) for j in range(len(classes)) if i != j),
                   reverse=True)[:3]
    lines = [f"The easiest classes are {easiest[0]} ({recall[easiest[0]]:.0%} recognised) and {easiest[1]} "
             f"({recall[easiest[1]]:.0%}); the hardest are {hardest[0]} ({recall[hardest[0]]:.0%}) and "
             f"{hardest[1]} ({recall[hardest[1]]:.0%})."]
    lines += [f"{classes[i].capitalize()} is most often taken for {classes[j]} ({rate:.0%} of {classes[i]}, "
              f"{counts[i, j]} faces)." for rate, i, j in pairs]
    return " ".join(lines)


def pick_faces(model: nn.Module, faces, per_class: int = 1) -> list[tuple[str, int, int, torch.Tensor]]:
    """For every class, up to `per_class` correctly and wrongly classified faces: (kind, true, predicted, face)."""
    images = faces.images.unsqueeze(1)
    with torch.no_grad():
        predicted = torch.cat([model(batch).argmax(1) for batch in images.split(256)])
    picked = []
    for label in range(len(faces.class_counts())):
        for kind, match in (("correct", True), ("wrong", False)):
            index = ((faces.labels == label) & ((predicted == faces.labels) == match)).nonzero()[:per_class, 0]
            picked += [(kind, label, int(predicted[i]), images[i]) for i in index.tolist()]
    return picked


def saliency_grid(explainer: Explainer, picked: list, classes: list[str]) -> str:
    faces = torch.stack([face for *_, face in picked])
    maps = {method: explainer.saliency(faces, method)[0].numpy() for method in REPORT_METHODS}
    figure, axes = plt.subplots(len(picked), 1 + len(REPORT_METHODS), figsize=(2 * (1 + len(REPORT_METHODS)),
                                                                                2 * len(picked)), squeeze=False)
    for row, (kind, true, predicted, face) in enumerate(picked):
        axes[row, 0].imshow(face[0].numpy(), cmap="gray", vmin=0, vmax=255)
        axes[row, 0].set_title(f"{classes[true]} ({kind}: {classes[predicted]})", fontsize=8)
        for column, method in enumerate(REPORT_METHODS, start=1):
            axes[row, column].imshow(maps[method][row], cmap="inferno", vmin=0, vmax=1)
            if row == 0:
                axes[row, column].set_title(method, fontsize=9)
    for axis in axes.flat:
        axis.axis("off")
    figure.tight_layout()
    return _figure(figure)


def tiles(images: np.ndarray, titles: list[str], columns: int = 8, cmap: str = "gray") -> str:
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.4 * columns, 1.5 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, title in zip(axes.flat, images, titles):
        axis.imshow(image, cmap=cmap)
        axis.set_title(title, fontsize=7)
    figure.tight_layout()
    return _figure(figure)


def model_card(manifest: Manifest, faithfulness: list[dict]) -> str:
    """What the model is, how it was trained, how well it does per class, and how faithful each saliency
    method is on it (deletion/insertion against a random map, the randomisation sanity check)."""
    facts = [("name", f"{manifest.name} {manifest.version}"), ("created", manifest.created),
             ("network", manifest.architecture), ("classes", ", ".join(manifest.classes)),
             ("input", f"{manifest.input.height}x{manifest.input.width} grey, seen at "
                       f"{manifest.preprocessing.resize_to}x{manifest.preprocessing.resize_to}"),
             ("test-time augmentation", manifest.tta)]
    if manifest.weights_source:
        facts.append(("weights", f"{manifest.weights_source.file} (sha256 {manifest.weights_source.sha256[:16]}…)"))
    facts += [(f"training: {key.replace('_', ' ')}", value) for key, value in manifest.training.model_dump().items()]
    content = _table([], facts)
    calibration = manifest.calibration
    if calibration:
        content += (f"<p>Probabilities calibrated by temperature scaling (T = {calibration.temperature:.3f}, fitted on "
                    f"{calibration.samples:,} {html.escape(calibration.split)} faces with {calibration.tta} TTA): "
                    f"expected calibration error {calibration.ece_before:.4f} before, <b>{calibration.ece_after:.4f}"
                    f"</b> calibrated ({calibration.bins} bins); no label changes.</p>"
                    f'<img alt="reliability diagram" src="{_figure(reliability_figure(calibration))}">')
    else:
        content += f"<p>The probabilities of its {manifest.tta} TTA are not calibrated (no temperature recorded).</p>"
    others = [other for other in manifest.calibrations if other is not calibration]
    if others:
        content += "<p>Temperatures of the other TTAs the service can be set to serve (<code>FER_TTA</code>):</p>" + \
            _table(["TTA", "T", "ECE as given", "ECE calibrated"],
                   [(other.tta, f"{other.temperature:.3f}", f"{other.ece_before:.4f}", f"{other.ece_after:.4f}")
                    for other in others])
    validation = manifest.validation
    if validation:
        content += (f"<p>Accuracy {validation.accuracy:.2%} on {validation.samples:,} {html.escape(validation.split)} images "
                    f"({validation.tta} TTA), macro F1 {validation.macro_f1:.3f}.</p>" + _table(
                        ["class", "precision", "recall", "F1", "images"],
                        [[name, f"{m.precision:.3f}", f"{m.recall:.3f}", f"{m.f1:.3f}", m.support]
                         for name, m in validation.per_class.items()]))
    else:
        content += "<p>This model directory records no validation.</p>"
    if faithfulness:
        content += ("<p>Faithfulness of the saliency methods: deleting the most salient pixels first should drop "
                    "the predicted class's probability faster than a random order (lower deletion AUC), inserting "
                    "them should raise it faster (higher insertion AUC); a method passes the sanity check when its "
                    "maps change once the network's weights are randomised.</p>" + _table(
                        ["method", "images", "deletion AUC (random)", "insertion AUC (random)",
                         "Spearman after randomisation", "sanity check"],
                        [[row["method"], row["images"], f"{row['deletion_auc']} ({row['random_deletion_auc']})",
                          f"{row['insertion_auc']} ({row['random_insertion_auc']})", row["randomised_spearman"],
                          "passes" if row["passes_sanity_check"] else "fails"] for row in faithfulness]))
    return content


def faces_for(manifest: Manifest, data: str | None) -> tuple[str, str]:
    """The faces of Q4 and the derivations: `data`, else the model's own data, else the synthetic generator's
    (a model exported from shipped weights on a machine without FER2013)."""
    source = data or manifest.training.data
    if not data and not (source.startswith("synthetic") or Path(source).exists()):
        source = FALLBACK_FACES
    return source, "val" if has_split(source, "val") else "train"


def build_report(model_dir: Path, data: str | None = None, steps: int = 64) -> str:
    return render_report(model_dir, load_manifest(model_dir), data, steps)


def render_report(model_dir: Path, manifest: Manifest, data: str | None, steps: int) -> str:
    """The report of a model directory whose manifest is already loaded and verified."""
    model = load_eager_model(model_dir, manifest, torch.device("cpu"))
    explainer = Explainer(model, manifest.architecture, torch.device("cpu"))
    classes, size = manifest.classes, manifest.input.height
    source, split = faces_for(manifest, data)
    faces = load_split(source, split, size)
    architecture = read_json(model_dir, manifest, Artifact.ARCHITECTURE, [])
    history = read_json(model_dir, manifest, Artifact.HISTORY, [])
    confusion = read_json(model_dir, manifest, Artifact.CONFUSION_MATRIX, None)
    faithfulness = read_json(model_dir, manifest, Artifact.FAITHFULNESS, {}).get("rows", [])
    sections = [("The model", model_card(manifest, faithfulness))]

    total = sum(row["parameters"] for row in architecture)
    sections.append(("Q1. The architecture", f"<p>{html.escape(manifest.architecture)}, {total:,} parameters, "
                     f"input {size}x{size} grey, seen by the network at {manifest.preprocessing.resize_to}x"
                     f"{manifest.preprocessing.resize_to}.</p>" + _table(
                         ["layer", "type", "output shape", "parameters"],
                         [[r["name"], r["type"], "x".join(map(str, r["output_shape"])), f"{r['parameters']:,}"]
                          for r in architecture])))

    curves = _png(lambda buffer: plot_history(history, buffer)) if history else None
    sections.append(("Q2. Training history", f'<img alt="loss and accuracy per epoch" src="{curves}">' if curves
                     else "<p>This model directory holds no training history.</p>"))

    if confusion:
        matrix = _png(lambda buffer: plot_confusion(confusion, buffer, title=f"{split}"))
        sections.append(("Q3. Confusion matrix", f'<img alt="confusion matrix, counts and row-normalised" '
                         f'src="{matrix}"><p>{html.escape(discussion(confusion))}</p>'))
    else:
        sections.append(("Q3. Confusion matrix", "<p>This model directory holds no confusion matrix.</p>"))

    picked = pick_faces(model, faces)
    sections.append(("Q4. Saliency maps", f"<p>{', '.join(REPORT_METHODS)} for one correctly and one wrongly "
                     f"classified {split} face of every class (where there is one).</p>"
                     f'<img alt="saliency maps by class and method" src="{saliency_grid(explainer, picked, classes)}">'))

    last = next(reversed(explainer.layers))
    filters = compute_filters(explainer, FilterRequest.make(explainer, last, DEFAULT_FILTERS, steps=steps))
    kernels = compute_filters(explainer, FilterRequest.make(explainer, "conv1", tuple(range(64)), "weights"))
    sections.append(("Q5. What the filters respond to",
                     f"<p>Inputs that most activate the first 16 filters of {last} (gradient ascent, {steps} "
                     f"steps):</p>" + f'<img alt="filter visualisations of {last}" src="' + tiles(
                         filters.images, [f"{i}: {a:.2f}" for i, a in zip(DEFAULT_FILTERS, filters.activations)])
                     + '"><p>conv1\'s 64 kernels as the grey image sees them:</p><img alt="conv1 kernels" src="'
                     + tiles(kernels.images, [str(i) for i in range(64)], columns=16) + '">'))

    sample = faces.images[:32].unsqueeze(1)
    sizes = check_convolution_sizes(model, size)
    worst_size = max(abs(row["formula"] - row["observed"]) for row in sizes)
    bn = check_batchnorm_backward(model, sample)
    ce = check_softmax_cross_entropy(model, sample, faces.labels[:32])
    verdict = lambda ok: "passes" if ok else "FAILS"  # noqa: E731
    sections.append(("Derivations, checked on the network", (
        f"<h3>Output size of a convolution: out = ⌊(W + 2P − K) / S⌋ + 1 ({verdict(worst_size == 0)}: largest "
        f"difference {worst_size})</h3>" + _table(["layer", "W", "K", "S", "P", "formula", "observed"],
                                                   [list(row.values()) for row in sizes])
        + f"<h3>Batch norm's backward pass ({verdict(bn < 1e-8)}: largest |difference| {bn:.2e})</h3><p>dx = γ / "
          "(N σ) · (N dy − Σ dy − x̂ Σ(dy x̂)), computed by hand on bn1's input for 32 real faces, against "
          "autograd (float64).</p>"
        + f"<h3>Softmax + cross-entropy gradient ({verdict(ce < 1e-10)}: largest |difference| {ce:.2e})</h3><p>"
          "∂L/∂z = ŷ − y, on the network's own logits for 32 faces, against autograd (float64).</p>")))

    body = "".join(f'<section id="s{i}"><h2>{html.escape(title)}</h2>{content}</section>'
                   for i, (title, content) in enumerate(sections))
    accuracy = f"{manifest.validation.accuracy:.2%}" if manifest.validation else "not recorded"
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width"><title>Report: {html.escape(manifest.name)} {html.escape(manifest.version)}'
            '</title><style>'
            'body{font-family:sans-serif;max-width:60rem;margin:auto;padding:1rem}img{max-width:100%}'
            'table{border-collapse:collapse;font-size:.85rem;display:block;overflow-x:auto}'
            'td,th{border:1px solid #ccc;padding:.2rem .5rem}</style></head><body>'
            f"<h1>{html.escape(manifest.name)} {html.escape(manifest.version)}</h1><p>Validation accuracy {accuracy} "
            f"({manifest.tta} TTA); faces from {html.escape(source)} ({html.escape(split)}).</p>{body}</body></html>")


def store_report(model_dir: Path, data: str | None = None, steps: int = 64) -> Path:
    """The report kept in the model directory under role `report`: the manifest vouches for it and the
    service serves it (`GET /model/report`, the web page's model view)."""
    manifest = load_manifest(model_dir)  # before the report is replaced: it verifies the previous one
    path = Path(model_dir) / Artifact.REPORT.file
    write_atomically(path, render_report(model_dir, manifest, data, steps))
    add_artifact(model_dir, manifest, Artifact.REPORT)
    return path
