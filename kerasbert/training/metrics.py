"""Classification metrics in NumPy (the definitions scikit-learn uses).

A class never predicted has precision 0 and one never present has recall
0 (sklearn's `zero_division=0`); macro-F1 is the plain mean over all
classes. MCC is the multi-class form of Gorodkin (2004), as
`sklearn.metrics.matthews_corrcoef`: on two classes it is Matthews' phi.
"""

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
