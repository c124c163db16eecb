"""Statistics of evaluation results: the one home for intervals and seed summaries.

Two kinds of uncertainty appear in a comparison of fine-tuned models:

* within one run, the test set is small (30 contexts, a few sampled replies each):
  :func:`rtr_interval` and :func:`rtr_diff_interval` are percentile bootstraps that
  resample *contexts*, paired across models for a difference;
* across seeds, each seed draws its own data, trains its own adapter and samples its own
  replies: :func:`estimate` summarises a cell over seeds with a Student-t interval of the
  mean (one seed: its own bootstrap interval), :func:`seed_summary` gives mean and sample
  standard deviation per group.

The evaluate stage, the experiment's comparison and the report all call these.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


def _bootstrap_rtr(
    groups: list[list[list[float]]], threshold: float, n_boot: int, seed: int
) -> list:
    """RTR of each model under the same context resamples (contexts aligned across
    ``groups``: groups[m][c] holds model m's reply scores for context c)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(groups[0]), size=(n_boot, len(groups[0])))
    out = []
    for g in groups:
        hits = np.array([sum(s >= threshold for s in c) for c in g], dtype=float)
        sizes = np.array([len(c) for c in g], dtype=float)
        out.append(hits[idx].sum(1) / sizes[idx].sum(1))
    return out


def _percentiles(stats, level: float) -> tuple[float, float]:
    import numpy as np

    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def rtr_interval(
    scores_by_context: list[list[float]],
    threshold: float = 0.5,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the RTR, resampling *contexts*.

    Replies sampled for one context are not independent (a context that invites toxicity
    does so for all its replies), so resampling replies would understate the spread; a
    30-context test set leaves wide intervals, and this says how wide.
    """
    groups = [g for g in scores_by_context if g]
    if not groups:
        return float("nan"), float("nan")
    (stats,) = _bootstrap_rtr([groups], threshold, n_boot, seed)
    return _percentiles(stats, level)


def rtr_diff_interval(
    a: list[list[float]],
    b: list[list[float]],
    threshold: float = 0.5,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Paired bootstrap interval of RTR(a) - RTR(b) for two models on the same contexts.

    Both models are scored on the same resampled contexts, so the context-to-context
    spread that dominates :func:`rtr_interval` cancels: an interval below 0 says model
    ``a`` is less toxic than ``b`` on this test set beyond resampling noise.
    """
    if len(a) != len(b):
        raise ValueError(f"paired contexts differ: {len(a)} vs {len(b)}")
    keep = [i for i in range(len(a)) if a[i] and b[i]]
    if not keep:
        return float("nan"), float("nan")
    ra, rb = _bootstrap_rtr([[a[i] for i in keep], [b[i] for i in keep]], threshold, n_boot, seed)
    return _percentiles(ra - rb, level)


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    from scipy.stats import t

    return float(t.ppf(0.975, df))


@dataclass(frozen=True)
class Estimate:
    """A cell: value (one seed) or mean over ``n`` seeds, with its 95 % interval or none."""

    value: float | None
    lo: float | None = None
    hi: float | None = None
    n: int = 0

    def text(self, signed: bool = False) -> str:
        if self.value is None:
            return "n/a"
        f = (lambda v: f"{v:+.3f}") if signed else (lambda v: f"{v:.3f}")
        if self.lo is None or self.hi is None:
            return f(self.value)
        return f"{f(self.value)} [{f(self.lo)}, {f(self.hi)}]"

    def yerr(self) -> tuple[float, float]:
        """Error bar below and above the point (0 where there is no interval)."""
        if self.value is None or self.lo is None or self.hi is None:
            return 0.0, 0.0
        return max(0.0, self.value - self.lo), max(0.0, self.hi - self.value)


def finite(v: Any) -> float | None:
    """``v`` as a float when it is a finite number, else None."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def estimate(
    points: list[tuple[Any, Any, Any]], bounds: tuple[float, float] = (-math.inf, math.inf)
) -> Estimate:
    """One cell from per-seed ``(value, lo, hi)``: one seed keeps its own interval;
    several give the mean with a 95 % Student-t interval of the mean, clipped to
    ``bounds`` (with 2 seeds the t factor is 12.7 and the interval is honestly wide)."""
    pts = [(finite(v), finite(lo), finite(hi)) for v, lo, hi in points]
    pts = [p for p in pts if p[0] is not None]
    if not pts:
        return Estimate(None)
    if len(pts) == 1:
        v, lo, hi = pts[0]
        return Estimate(v, lo, hi, 1) if lo is not None and hi is not None else Estimate(v, n=1)
    vals = [p[0] for p in pts]
    mean = statistics.fmean(vals)
    half = t975(len(vals) - 1) * statistics.stdev(vals) / math.sqrt(len(vals))
    return Estimate(mean, max(bounds[0], mean - half), min(bounds[1], mean + half), len(vals))


def seed_summary(values: Iterable[Any]) -> tuple[float | None, float | None]:
    """``(mean, sample standard deviation)`` of the finite values (None where undefined)."""
    vals = [v for v in (finite(x) for x in values) if v is not None]
    mean = statistics.fmean(vals) if vals else None
    return mean, statistics.stdev(vals) if len(vals) > 1 else None
