"""Ensembles and deliberately weakened detectors (wrappers over any Detector)."""

from __future__ import annotations

import math

import numpy as np

from optimus_lib.data.schema import Sample
from optimus_lib.detect.base import Detector
from optimus_lib.errors import OptimusError


class EnsembleDetector(Detector):
    """Mean, max or weighted mean of member scores."""

    def __init__(
        self, members: list[Detector], reduce: str = "mean", weights: list[float] | None = None
    ) -> None:
        if not members:
            raise OptimusError("an ensemble needs at least one detector")
        if weights is not None and len(weights) != len(members):
            raise OptimusError("ensemble weights must match the number of detectors")
        self.members = members
        self.reduce = reduce
        self.weights = weights
        self.name = f"{reduce}(" + ",".join(m.name for m in members) + ")"

    def score(self, samples: list[Sample]) -> list[float]:
        mat = np.array([m.score(samples) for m in self.members], dtype=np.float64)
        if self.reduce == "max":
            return mat.max(0).tolist()
        w = np.array(self.weights or [1.0] * len(self.members), dtype=np.float64)
        return (w @ mat / w.sum()).tolist()


def weaken_scores(
    scores: list[float],
    labels: list[int | None],
    target_recall: float,
    threshold: float,
    categories: list[str | None] | None = None,
    category: str | None = None,
) -> list[float]:
    """Lower a detector's recall on purpose (docs/method.md, "Simulating imperfect classifiers").

    The truly toxic samples in scope (all, or one ``category`` only) are ranked by score;
    only the top ``ceil(target_recall * n)`` keep their score, the rest are pushed just
    under the threshold, so they go unflagged while their ranking is kept. Benign samples
    and out-of-scope toxic ones are untouched. A detector can't be made *better* this
    way: if it already catches fewer, its recall stays below the target.
    """
    if any(y is None for y in labels):
        raise OptimusError("weakening a detector needs a 'label' on every record")
    cats = categories or [None] * len(scores)
    scope = [
        i
        for i, (y, c) in enumerate(zip(labels, cats))
        if y == 1 and (category is None or c == category)
    ]
    if category is not None and not scope:
        raise OptimusError(f"no toxic samples in category {category!r} to weaken")
    keep = math.ceil(target_recall * len(scope) - 1e-9)
    ranked = sorted(scope, key=lambda i: -scores[i])
    out = list(scores)
    below = float(np.nextafter(threshold, -np.inf))
    for i in ranked[keep:]:
        out[i] = min(out[i], below)
    return out


class WeakenedDetector(Detector):
    """A detector whose recall is capped at a target, overall or inside one category."""

    def __init__(self, base: Detector, target_recall: float, category: str | None = None):
        self.base = base
        self.target_recall = target_recall
        self.category = category
        self.threshold = base.threshold
        where = f",{category}" if category else ""
        self.name = f"weakened({base.name},{target_recall:g}{where})"

    def score(self, samples: list[Sample]) -> list[float]:
        return weaken_scores(
            self.base.score(samples),
            [s.label for s in samples],
            self.target_recall,
            self.threshold,
            [s.category for s in samples],
            self.category,
        )
