"""Detector quality against ground-truth labels: precision, recall, F1, FPR, AUC."""

from __future__ import annotations

import math


def classification_metrics(
    labels: list[int | None], scores: list[float], threshold: float
) -> dict[str, float] | None:
    """Metrics over the labelled samples only; ``None`` when there are no labels."""
    pairs = [(y, s) for y, s in zip(labels, scores) if y is not None]
    if not pairs:
        return None
    tp = sum(1 for y, s in pairs if y == 1 and s >= threshold)
    fp = sum(1 for y, s in pairs if y == 0 and s >= threshold)
    fn = sum(1 for y, s in pairs if y == 1 and s < threshold)
    tn = sum(1 for y, s in pairs if y == 0 and s < threshold)
    prec = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * prec * rec / (prec + rec) if tp else 0.0
    fpr = fp / (fp + tn) if fp + tn else float("nan")
    return {
        "n": len(pairs),
        "n_toxic": tp + fn,
        "flagged": tp + fp,
        "precision": prec,
        "recall": rec,
        "f1": f1,
        "fpr": fpr,
        "auc": auc([y for y, _ in pairs], [s for _, s in pairs]),
    }


def auc(labels: list[int], scores: list[float]) -> float:
    """ROC AUC by the Mann-Whitney rank sum (ties count half); NaN with one class only.

    O(n log n) with average ranks, so scoring a 100k-dialog scan stays instant (the pairwise
    count it replaces was O(n_pos x n_neg)).
    """
    from scipy.stats import rankdata

    n_pos = sum(1 for y in labels if y == 1)
    n_neg = sum(1 for y in labels if y == 0)
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(scores, method="average")
    rank_sum = float(sum(r for y, r in zip(labels, ranks) if y == 1))
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"
