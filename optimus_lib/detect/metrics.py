"""Detector quality against ground-truth labels: precision, recall, F1, FPR, AUC, ROC.

scikit-learn computes them; this module only restricts to the labelled samples, applies
the ``score >= threshold`` flag rule used everywhere, and returns plain floats (NaN where
a rate is undefined, e.g. recall with no toxic sample) so results serialise as JSON.
"""

from __future__ import annotations

import math


def _labelled(labels: list[int | None], scores: list[float]) -> tuple[list[int], list[float]]:
    pairs = [(int(y), float(s)) for y, s in zip(labels, scores) if y is not None]
    return [y for y, _ in pairs], [s for _, s in pairs]


def classification_metrics(
    labels: list[int | None], scores: list[float], threshold: float
) -> dict[str, float] | None:
    """Metrics over the labelled samples only; ``None`` when there are no labels."""
    from sklearn.metrics import confusion_matrix

    ys, ss = _labelled(labels, scores)
    if not ys:
        return None
    flags = [int(s >= threshold) for s in ss]
    tn, fp, fn, tp = (int(x) for x in confusion_matrix(ys, flags, labels=[0, 1]).ravel())
    prec = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * prec * rec / (prec + rec) if tp else 0.0
    fpr = fp / (fp + tn) if fp + tn else float("nan")
    return {
        "n": len(ys),
        "n_toxic": tp + fn,
        "flagged": tp + fp,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "precision": prec,
        "recall": rec,
        "f1": f1,
        "fpr": fpr,
        "auc": auc(ys, ss),
    }


def auc(labels: list[int], scores: list[float]) -> float:
    """ROC AUC (ties count half); NaN with one class only."""
    from sklearn.metrics import roc_auc_score

    if len(set(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def roc_points(labels: list[int | None], scores: list[float]) -> dict[str, list[float]] | None:
    """ROC curve of the labelled samples (for the KFP UI); None without both classes."""
    from sklearn.metrics import roc_curve

    ys, ss = _labelled(labels, scores)
    if len(set(ys)) < 2:
        return None
    fpr, tpr, thr = roc_curve(ys, ss)
    # sklearn puts +inf first ("flag nothing"); KFP's schema wants finite numbers.
    thr = [min(float(t), 1.0) if math.isfinite(t) else 1.0 for t in thr]
    return {"fpr": [float(x) for x in fpr], "tpr": [float(x) for x in tpr], "thresholds": thr}


def fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"
