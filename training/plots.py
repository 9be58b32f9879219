"""The report's figures: training curves and the confusion matrix."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from schemas.labels import CLASSES  # noqa: E402


def plot_history(history: list[dict], path: Path) -> None:
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("train_loss", "training"), ("val_loss", "validation")):
        loss_axis.plot(epochs, [row[key] for row in history], marker="o", label=label)
    for key, label in (("train_accuracy", "training"), ("val_accuracy", "validation")):
        accuracy_axis.plot(epochs, [row[key] for row in history], marker="o", label=label)
    loss_axis.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    accuracy_axis.set(title="Accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1))
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_confusion(confusion: dict, path: Path, title: str = "Confusion matrix") -> None:
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for axis, key, fmt, subtitle in ((axes[0], "counts", "d", "counts"), (axes[1], "normalized", ".2f", "row-normalised")):
        values = confusion[key]
        shown = confusion["normalized"]  # colour by rate so that rare classes stay visible
        axis.imshow(shown, cmap="Blues", vmin=0, vmax=1)
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                axis.text(j, i, format(value, fmt), ha="center", va="center", fontsize=8,
                          color="white" if shown[i][j] > 0.5 else "black")
        axis.set_xticks(range(len(CLASSES)), CLASSES, rotation=45, ha="right")
        axis.set_yticks(range(len(CLASSES)), CLASSES)
        axis.set(xlabel="predicted", ylabel="true", title=f"{title} ({subtitle})")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def reliability_figure(calibration):
    """The reliability diagram of a `Calibration`: accuracy against confidence per bin, before and after."""
    figure, axis = plt.subplots(figsize=(5.5, 5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for rows, ece, label in ((calibration.reliability_before, calibration.ece_before, "as the model gives them"),
                             (calibration.reliability_after, calibration.ece_after,
                              f"temperature {calibration.temperature:.3f}")):
        shown = [row for row in rows if row.count]
        axis.plot([row.confidence for row in shown], [row.accuracy for row in shown], marker="o",
                  label=f"{label} (ECE {ece:.3f})")
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy",
             title=f"Reliability on {calibration.split} ({calibration.samples} faces, {calibration.bins} bins)")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return figure


def plot_reliability(calibration, path: Path) -> None:
    figure = reliability_figure(calibration)
    figure.savefig(path, dpi=120)
    plt.close(figure)
