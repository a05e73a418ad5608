"""Pictures people would rather look at than read: training curves and a confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
    return counts


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: Sequence[dict[str, float]], path: Path) -> Path:
    """Loss and accuracy per epoch, train against test."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((ax_loss, "loss", "Loss"), (ax_acc, "accuracy", "Accuracy")):
        # Training figures are measured with dropout on and label-smoothed targets, so the
        # train loss sits above the test loss by construction.
        ax.plot(epochs, [row[key] for row in history], "o-", label="train (dropout, smoothing)")
        ax.plot(epochs, [row[f"test_{key}"] for row in history], "s-", label="test")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    if history:
        best = max(row["test_accuracy"] for row in history)
        ax_acc.set_title(f"Accuracy (best test {best:.2%})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(counts: np.ndarray, path: Path) -> Path:
    """Confusion matrix with counts in every cell; the diagonal is what went right."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    shown = np.log1p(counts)  # log scale so that the few mistakes stay visible
    image = ax.imshow(shown, cmap="Blues")
    classes = counts.shape[0]
    threshold = shown.max() / 2
    for true in range(classes):
        for pred in range(classes):
            ax.text(
                pred,
                true,
                str(counts[true, pred]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if shown[true, pred] > threshold else "black",
            )
    ax.set_xticks(range(classes))
    ax.set_yticks(range(classes))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"Confusion matrix on the test set (accuracy {accuracy:.2%})")
    fig.colorbar(image, ax=ax, label="log(1 + count)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
