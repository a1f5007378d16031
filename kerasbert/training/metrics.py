"""Classification metrics in NumPy (the definitions scikit-learn uses), and
`confusion.png`.

A class never predicted has precision 0 and one never present has recall
0 (sklearn's `zero_division=0`); macro-F1 is the plain mean over all
classes. MCC is the multi-class form of Gorodkin (2004), as
`sklearn.metrics.matthews_corrcoef`: on two classes it is Matthews' phi.
"""

import os

import numpy as np


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """`[true class, predicted class]` counts."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def _ratio(a, b):
    return np.divide(a, b, out=np.zeros(len(a)), where=b > 0)


def mcc(matrix: np.ndarray) -> float:
    c = matrix.astype(np.float64)
    s = c.sum()
    t, p = c.sum(axis=1), c.sum(axis=0)  # true and predicted per class
    cov_tp = np.trace(c) * s - t @ p
    cov_pp = s * s - p @ p
    cov_tt = s * s - t @ t
    if cov_pp * cov_tt == 0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_pp * cov_tt))


def classification_metrics(y_true, y_pred, labels: list[str]) -> dict:
    """accuracy, macro_f1, mcc, per-class precision/recall/f1/support and
    the confusion matrix, as plain JSON-able values."""
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    hits = np.diag(matrix).astype(np.float64)
    precision = _ratio(hits, matrix.sum(axis=0))
    recall = _ratio(hits, matrix.sum(axis=1))
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {
        "accuracy": float(hits.sum() / max(matrix.sum(), 1)),
        "macro_f1": float(f1.mean()),
        "mcc": mcc(matrix),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(matrix[i].sum()),
            }
            for i, name in enumerate(labels)
        },
        "confusion": matrix.tolist(),
    }


def plot_confusion(
    matrix, labels: list[str], png_path: str, title: str = ""
) -> str:
    """A confusion matrix heat map with label names and counts."""
    from matplotlib.figure import Figure  # no pyplot: see plots.py

    from kerasbert.files import atomic_path

    matrix = np.asarray(matrix)
    size = 2.5 + 0.6 * len(labels)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    dark = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(count),
            ha="center",
            va="center",
            color="white" if count > dark else "black",
            fontsize=8,
        )
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=100)
    return png_path
