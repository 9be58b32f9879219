"""Accuracy, per-class precision/recall/F1 and the confusion matrix, in canonical class order; calibration."""

import numpy as np
import torch

from schemas.labels import CLASSES
from schemas.manifest import ClassMetrics, ConfusedPair, EvaluationMetrics, ReliabilityBin


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int = len(CLASSES)) -> torch.Tensor:
    """Counts, rows = true class, columns = predicted class."""
    index = labels.cpu().long() * num_classes + predictions.cpu().long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def summarize(confusion: torch.Tensor, split: str, loss: float | None = None, tta: str = "none",
              top_pairs: int = 5) -> EvaluationMetrics:
    cm = confusion.double()
    true_positive = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = torch.where(predicted > 0, true_positive / predicted.clamp(min=1), torch.zeros_like(cm[0]))
    recall = torch.where(support > 0, true_positive / support.clamp(min=1), torch.zeros_like(cm[0]))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(cm[0]))
    per_class = {name: ClassMetrics(precision=float(precision[i]), recall=float(recall[i]), f1=float(f1[i]),
                                    support=int(support[i])) for i, name in enumerate(CLASSES)}
    off_diagonal = [(int(cm[i, j]), i, j) for i in range(len(CLASSES)) for j in range(len(CLASSES)) if i != j]
    most_confused = [ConfusedPair(true=CLASSES[i], predicted=CLASSES[j], count=count,
                                  rate=count / max(int(support[i]), 1))
                     for count, i, j in sorted(off_diagonal, reverse=True)[:top_pairs] if count > 0]
    present = support > 0
    return EvaluationMetrics(split=split, samples=int(cm.sum()), accuracy=float(true_positive.sum() / cm.sum()),
                             macro_f1=float(f1[present].mean()), loss=loss, tta=tta, per_class=per_class,
                             most_confused=most_confused)


def confusion_json(confusion: torch.Tensor) -> dict:
    counts = confusion.long()
    rows = counts.sum(1, keepdim=True).clamp(min=1).double()
    return {"classes": list(CLASSES), "counts": counts.tolist(),
            "normalized": (counts.double() / rows).round(decimals=4).tolist()}


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> list[ReliabilityBin]:
    """The faces in equal-width bins of confidence (the top probability), with their mean confidence and accuracy
    (Guo et al. 2017's reliability diagram)."""
    confidence, right = probabilities.max(1), probabilities.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        rows.append(ReliabilityBin(low=float(edges[b]), high=float(edges[b + 1]), count=count,
                                   confidence=float(confidence[inside].mean()) if count else None,
                                   accuracy=float(right[inside].mean()) if count else None))
    return rows


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Sum over confidence bins of |accuracy - confidence| weighted by the bin's share of the faces."""
    rows = reliability(probabilities, labels, bins)
    return float(sum(row.count * abs(row.accuracy - row.confidence) for row in rows if row.count) / len(labels))
