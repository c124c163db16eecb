"""Choosing a detector's flagging threshold from its scores (docs/method.md, stage 1).

The paper flags at 0.5, but a detector's scores are only *ordered* correctly, not
calibrated: the bundled 135M judge, a lexicon and an SVM all put their natural cut in
different places. A wrong threshold costs twice in Optimus (missed toxic replies are
trained on; false positives are healed for nothing), so the threshold is chosen from
data instead of assumed:

* ``fpr``: with a small labelled set, the lowest threshold that keeps the false-positive
  rate on benign samples within a budget. Lowest, because once the benign budget is
  met every toxic sample caught is free, so this threshold has the most recall the
  budget allows on that set.
* ``f1``: with a labelled set and no explicit budget, the cut that maximises F1.
* ``gmm``: with no labels at all (a fresh, untrusted dataset), fit a two-component
  Gaussian mixture to the scores and cut where the high-mean ("toxic") component
  becomes the more likely one. When the scores show no two groups the fit means
  nothing, so the paper's 0.5 is kept and the reason is returned.

Every function treats a sample as flagged when ``score >= threshold``, like
:meth:`optimus_lib.detect.base.Detector.flag`. Only the dev set
(``optimus_lib/resources/devset.jsonl``) or a user's own labelled data should be used to
choose thresholds; calibrating on the data you then report on overstates quality.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import numpy as np

from optimus_lib.detect.metrics import classification_metrics
from optimus_lib.errors import OptimusError

Method = Literal["fpr", "f1", "gmm"]
METHODS: tuple[str, ...] = ("fpr", "f1", "gmm")
FALLBACK_THRESHOLD = 0.5  # the paper's threshold, kept when a mixture can't be fitted


@dataclass
class Calibration:
    """A chosen threshold, how it was chosen, and what it achieves on the data used.

    ``details`` holds method-specific facts (target and achieved FPR, the best F1, the
    mixture's means and weights, a fallback reason...) so a run's report can say why a
    threshold is what it is.
    """

    threshold: float
    method: str
    details: dict[str, Any] = field(default_factory=dict)


def _as_scores(scores: Sequence[float]) -> np.ndarray:
    arr = np.asarray(list(scores), dtype=np.float64)
    if arr.ndim != 1:
        raise OptimusError("scores must be a flat list of numbers")
    if arr.size and not np.all(np.isfinite(arr)):
        raise OptimusError("scores must be finite numbers (found NaN or infinity)")
    return arr


def _labelled(
    scores: Sequence[float], labels: Sequence[int | bool | None]
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and 0/1 labels of the labelled samples only (``None`` labels are skipped)."""
    arr = _as_scores(scores)
    if len(labels) != arr.size:
        raise OptimusError(f"{arr.size} scores but {len(labels)} labels")
    keep = [i for i, y in enumerate(labels) if y is not None]
    ys = np.asarray([int(labels[i]) for i in keep], dtype=np.int64)
    if ys.size and not np.all((ys == 0) | (ys == 1)):
        raise OptimusError("labels must be 0/1 (or True/False, or None for unlabelled)")
    return arr[keep], ys


def threshold_for_fpr(
    scores: Sequence[float], labels: Sequence[int | bool | None], target_fpr: float
) -> float:
    """The lowest threshold whose false-positive rate on the benign samples is <= target.

    With ``n`` benign samples at most ``k = floor(target_fpr * n)`` of them may be
    flagged, so the threshold sits just above the (k+1)-th highest benign score (the
    next float up, as flags are ``score >= threshold``); a target of 0 therefore lands
    just above the highest benign score. Any lower threshold would flag one benign
    sample too many; any higher one only loses recall. When the budget allows every
    benign sample to be flagged, the lowest score overall is returned (flag everything).
    """
    if not 0.0 <= target_fpr <= 1.0 or math.isnan(target_fpr):
        raise OptimusError(f"target FPR must be in [0, 1], got {target_fpr}")
    s, y = _labelled(scores, labels)
    benign = np.sort(s[y == 0])[::-1]
    if benign.size == 0:
        raise OptimusError("calibrating for a false-positive rate needs benign-labelled samples")
    allowed = math.floor(target_fpr * benign.size + 1e-9)
    if allowed >= benign.size:
        return float(s.min())
    return float(np.nextafter(benign[allowed], np.inf))


def threshold_best_f1(scores: Sequence[float], labels: Sequence[int | bool | None]) -> float:
    """The threshold that maximises F1 on the labelled samples.

    Only cuts between distinct scores change the flags, so each distinct score is tried
    as the lowest flagged one. The returned threshold is the midpoint between the best
    cut's lowest flagged score and the highest unflagged score below it: every threshold
    in that gap gives the same F1 here, and the middle leaves the most room for unseen
    scores on either side (ties in F1 go to the lower cut, i.e. more recall, because a
    missed toxic reply is trained on while a false positive is only healed).
    """
    s, y = _labelled(scores, labels)
    if not np.any(y == 1):
        raise OptimusError("maximising F1 needs at least one toxic-labelled sample")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    flagged = np.arange(1, s.size + 1)
    # evaluate only at the last index of each run of equal scores (a whole tie is flagged)
    ends = np.r_[np.nonzero(np.diff(s_sorted))[0], s.size - 1]
    f1 = 2 * tp[ends] / (flagged[ends] + y.sum())
    best = int(ends[np.flatnonzero(f1 == f1.max())[-1]])  # lowest cut among the ties
    low_flagged = s_sorted[best]
    if best + 1 < s.size:
        mid = (low_flagged + s_sorted[best + 1]) / 2
        # adjacent floats: the midpoint can round down onto the unflagged score
        return float(mid if mid > s_sorted[best + 1] else low_flagged)
    return float(low_flagged)


def _gmm_threshold(
    scores: Sequence[float], random_state: int = 0, fallback: float = FALLBACK_THRESHOLD
) -> tuple[float, str, dict[str, Any]]:
    """(threshold, reason, fit details) of the two-component mixture cut."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    x = _as_scores(scores)
    if x.size < 2:
        return fallback, "fallback: fewer than two scores, nothing to separate", {}
    if np.ptp(x) == 0.0:
        return fallback, "fallback: all scores are equal, nothing to separate", {}
    data = x.reshape(-1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        two = GaussianMixture(2, random_state=random_state, n_init=3).fit(data)
        one = GaussianMixture(1, random_state=random_state).fit(data)
    means = two.means_.ravel()
    variances = two.covariances_.ravel()
    weights = two.weights_.ravel()
    hi, lo = int(np.argmax(means)), int(np.argmin(means))
    details: dict[str, Any] = {
        "means": [float(means[lo]), float(means[hi])],
        "stds": [float(math.sqrt(variances[lo])), float(math.sqrt(variances[hi]))],
        "weights": [float(weights[lo]), float(weights[hi])],
        "bic_one": float(one.bic(data)),
        "bic_two": float(two.bic(data)),
    }
    if hi == lo or means[hi] - means[lo] <= 1e-9 * max(1.0, abs(means[hi])):
        return fallback, "fallback: the mixture found one component (equal means)", details
    if details["bic_two"] >= details["bic_one"]:
        return fallback, "fallback: one Gaussian explains the scores as well as two (BIC)", details
    # log w_hi N(x; m_hi, v_hi) - log w_lo N(x; m_lo, v_lo) = a x^2 + b x + c; the
    # posterior of the high component is 0.5 where this is 0 and rises through it.
    mh, ml, vh, vl = means[hi], means[lo], variances[hi], variances[lo]
    a = 1 / (2 * vl) - 1 / (2 * vh)
    b = mh / vh - ml / vl
    c = ml**2 / (2 * vl) - mh**2 / (2 * vh) + math.log(weights[hi] / weights[lo])
    c += 0.5 * math.log(vl / vh)
    if abs(a) < 1e-12 * max(abs(b), 1.0):
        roots = [-c / b] if b != 0 else []
    else:
        disc = b * b - 4 * a * c
        roots = [] if disc < 0 else [(-b + sg * math.sqrt(disc)) / (2 * a) for sg in (1, -1)]
    rising = [r for r in roots if 2 * a * r + b > 0]
    between = [r for r in rising if ml <= r <= mh]
    if between:
        return float(between[0]), "ok: posterior crossing between the two means", details
    if rising:
        mid = (ml + mh) / 2
        r = min(rising, key=lambda r: abs(r - mid))
        return float(r), "ok: posterior crossing outside the means (unbalanced mixture)", details
    return fallback, "fallback: the high-mean component never becomes the more likely", details


def threshold_unsupervised(
    scores: Sequence[float], random_state: int = 0, fallback: float = FALLBACK_THRESHOLD
) -> tuple[float, str]:
    """Label-free threshold: where a 2-component Gaussian mixture's "toxic" side takes over.

    A good detector scores a poisoned dataset as two groups (benign low, toxic high);
    the score where the high-mean component's posterior crosses 0.5 is the Bayes cut
    between them under the fitted model, and needs no labels. The crossing is solved
    exactly from the fitted means, variances and weights. Returns ``(threshold, reason)``;
    the reason starts with ``"fallback"`` when the scores are all equal, the mixture
    collapses to one component, or one Gaussian fits as well as two (by BIC), in which
    case ``fallback`` (the paper's 0.5) is returned instead of a meaningless cut.
    ``random_state`` is fixed so the same scores always give the same threshold.
    """
    thr, reason, _ = _gmm_threshold(scores, random_state, fallback)
    return thr, reason


def calibrate(
    scores: Sequence[float],
    labels: Sequence[int | bool | None] | None = None,
    method: Method = "fpr",
    target_fpr: float = 0.05,
) -> Calibration:
    """Choose a threshold by ``method`` (``fpr``, ``f1`` or ``gmm``).

    ``fpr`` and ``f1`` need labels; ``gmm`` ignores them for fitting. Whenever labels are
    given, ``details["achieved"]`` holds precision / recall / FPR / AUC at the chosen
    threshold on those same samples, which is an optimistic, in-sample estimate.
    """
    if method not in METHODS:
        raise OptimusError(
            f"calibration method must be one of {', '.join(METHODS)}, got {method!r}"
        )
    details: dict[str, Any] = {}
    if method in ("fpr", "f1"):
        if labels is None or all(y is None for y in labels):
            raise OptimusError(f"calibration method {method!r} needs labelled samples")
        if method == "fpr":
            thr = threshold_for_fpr(scores, labels, target_fpr)
            details["target_fpr"] = target_fpr
        else:
            thr = threshold_best_f1(scores, labels)
    else:
        thr, reason, details = _gmm_threshold(scores)
        details["reason"] = reason
        details["fallback"] = reason.startswith("fallback")
    if labels is not None:
        if len(labels) != len(scores):
            raise OptimusError(f"{len(scores)} scores but {len(labels)} labels")
        ys = [None if y is None else int(y) for y in labels]
        details["achieved"] = classification_metrics(ys, [float(s) for s in scores], thr)
    return Calibration(threshold=thr, method=method, details=details)


def devset_path() -> Path:
    """The bundled hand-written dev set: the only data detector settings are tuned on."""
    return Path(str(files("optimus_lib") / "resources" / "devset.jsonl"))


def calibrate_detector(
    detector,
    method: str,
    train_scores: Sequence[float],
    data: str = "devset",
    target_fpr: float = 0.05,
) -> Calibration:
    """Calibrate ``detector``'s threshold and set it; labelled methods score ``data`` first."""
    from optimus_lib.data.io import read_samples

    if method == "gmm":
        cal = calibrate(train_scores, None, "gmm")
    else:
        samples = read_samples(devset_path() if data == "devset" else data)
        cal = calibrate(detector.score(samples), [s.label for s in samples], method, target_fpr)
        cal.details["data"] = data
    if detector is not None:  # None: scores reused from an earlier scan (gmm only)
        detector.threshold = cal.threshold
    return cal
