"""The plots a run writes: `loss.png` (MLM and NSP loss and accuracy
curves from a pretraining run's `metrics.csv`) and `confusion.png` (a
classifier's confusion matrix)."""

import csv
import os

from kerasbert.files import atomic_path


def read_metrics(csv_path: str) -> dict:
    """Returns {split: {column: ([steps], [values])}}, blanks skipped."""
    series = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            split = series.setdefault(row["split"], {})
            step = float(row["step"])
            for key, value in row.items():
                if key in ("split", "step") or value in ("", None):
                    continue
                steps, values = split.setdefault(key, ([], []))
                steps.append(step)
                values.append(float(value))
    return series


def plot_metrics(csv_path: str, png_path: str) -> str:
    # A bare Figure, not pyplot: no global backend switch, so a notebook's
    # inline plots keep working after a run wrote its loss.png.
    from matplotlib.figure import Figure

    series = read_metrics(csv_path)
    fig = Figure(figsize=(10, 7))
    axes = fig.subplots(2, 2, sharex=True)
    panels = [
        ("mlm_loss", "MLM loss"),
        ("nsp_loss", "NSP loss"),
        ("mlm_accuracy", "MLM accuracy"),
        ("nsp_accuracy", "NSP accuracy"),
    ]
    styles = {"train": dict(marker=None), "heldout": dict(marker="o")}
    for ax, (column, title) in zip(axes.flat, panels):
        for split, values in series.items():
            if column in values:
                steps, points = values[column]
                ax.plot(steps, points, label=split, **styles.get(split, {}))
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("step")
    axes[0][0].legend()
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=100)
    return png_path


def plot_confusion(
    matrix, labels: list[str], png_path: str, title: str = ""
) -> str:
    """A confusion matrix heat map with label names and counts."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: see plot_metrics

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
