"""Threshold calibration: hand-made scores where the right threshold is known exactly."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest

from optimus_lib.data.schema import parse_record
from optimus_lib.detect.calibrate import (
    Calibration,
    calibrate,
    threshold_best_f1,
    threshold_for_fpr,
    threshold_unsupervised,
)
from optimus_lib.errors import OptimusError

# benign 0.1..0.4, toxic 0.6..0.9: perfectly separable
SEP_SCORES = [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9]
SEP_LABELS = [0, 0, 0, 0, 1, 1, 1, 1]


def flags(scores, thr):
    return [s >= thr for s in scores]


# ---- FPR budget -------------------------------------------------------------------------
def test_fpr_zero_is_just_above_the_highest_benign_score():
    thr = threshold_for_fpr(SEP_SCORES, SEP_LABELS, 0.0)
    assert thr == np.nextafter(0.4, 1.0)
    assert flags(SEP_SCORES, thr) == [bool(y) for y in SEP_LABELS]
    # the next float down would flag the benign 0.4: this is the lowest valid threshold
    assert np.nextafter(thr, 0.0) == 0.4


def test_fpr_budget_allows_exactly_k_benign_flags():
    # 10 benign scores 0.00..0.45 plus toxic ones that overlap them
    benign = [i / 20 for i in range(10)]
    toxic = [0.3, 0.5, 0.9]
    scores, labels = benign + toxic, [0] * 10 + [1] * 3
    # 20 % of 10 benign -> 2 may be flagged (0.45, 0.40); the cut sits just above 0.35
    thr = threshold_for_fpr(scores, labels, 0.2)
    assert thr == np.nextafter(0.35, 1.0)
    assert sum(f for f, y in zip(flags(scores, thr), labels) if y == 0) == 2
    # 0.25 of 10 is 2.5 -> still 2 allowed (never round a budget up)
    assert threshold_for_fpr(scores, labels, 0.25) == thr


def test_fpr_with_tied_benign_scores_never_exceeds_budget():
    scores, labels = [0.5, 0.5, 0.5, 0.2, 0.9], [0, 0, 0, 0, 1]
    thr = threshold_for_fpr(scores, labels, 0.25)  # 1 of 4 allowed, but 3 tie at 0.5
    assert thr == np.nextafter(0.5, 1.0)
    assert sum(flags(scores[:4], thr)) == 0


def test_fpr_one_flags_everything_and_unlabelled_samples_are_ignored():
    assert threshold_for_fpr(SEP_SCORES, SEP_LABELS, 1.0) == 0.1
    scores = [0.99, *SEP_SCORES]  # an unlabelled very high score doesn't count as benign
    assert threshold_for_fpr(scores, [None, *SEP_LABELS], 0.0) == np.nextafter(0.4, 1.0)


def test_fpr_errors():
    with pytest.raises(OptimusError, match="benign"):
        threshold_for_fpr([0.1, 0.9], [1, 1], 0.05)
    with pytest.raises(OptimusError, match="target FPR"):
        threshold_for_fpr(SEP_SCORES, SEP_LABELS, 1.5)
    with pytest.raises(OptimusError, match="labels"):
        threshold_for_fpr([0.1, 0.2], [0], 0.1)
    with pytest.raises(OptimusError, match="finite"):
        threshold_for_fpr([0.1, float("nan")], [0, 1], 0.1)


# ---- best F1 ----------------------------------------------------------------------------
def test_best_f1_on_separable_scores_is_the_middle_of_the_gap():
    assert threshold_best_f1(SEP_SCORES, SEP_LABELS) == pytest.approx(0.5)


def test_best_f1_known_optimum_with_overlap():
    # sorted: 0.9 T, 0.8 T, 0.7 B, 0.6 T, 0.5 B, 0.4 B, 0.3 T
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    labels = [1, 1, 0, 1, 0, 0, 1]
    # F1 by lowest flagged score: .9 -> 2/5, .8 -> 4/6, .7 -> 4/7, .6 -> 6/8, .5 -> 6/9,
    # .4 -> 6/10, .3 -> 8/11. Best is 0.6 (0.75): threshold between 0.5 and 0.6.
    assert threshold_best_f1(scores, labels) == pytest.approx(0.55)
    f1 = calibrate(scores, labels, "f1").details["achieved"]["f1"]
    assert f1 == pytest.approx(0.75)


def test_best_f1_ties_prefer_more_recall_and_tied_scores_move_together():
    # cut after 0.8 -> F1 2/3 (1 TP); cut after 0.2 -> F1 2*2/(4+2) = 2/3 too: lower wins
    scores, labels = [0.8, 0.6, 0.4, 0.2, 0.1], [1, 0, 0, 1, 0]
    assert threshold_best_f1(scores, labels) == pytest.approx(0.15)
    # a benign and a toxic sample tied at 0.7 are flagged together or not at all
    scores, labels = [0.9, 0.7, 0.7, 0.1], [1, 1, 0, 0]
    thr = threshold_best_f1(scores, labels)
    assert thr == pytest.approx(0.4)  # F1 0.8 (2 TP, 1 FP) beats 0.667 (1 TP)


def test_best_f1_adjacent_floats_keep_the_cut():
    lo = 0.5
    hi = float(np.nextafter(lo, 1.0))
    thr = threshold_best_f1([hi, lo], [1, 0])
    assert flags([hi, lo], thr) == [True, False]


def test_best_f1_needs_a_toxic_sample():
    with pytest.raises(OptimusError, match="toxic"):
        threshold_best_f1([0.1, 0.2], [0, 0])


# ---- unsupervised (GMM) -----------------------------------------------------------------
def test_gmm_two_symmetric_clusters_cut_in_the_middle():
    rng = np.random.default_rng(0)
    low = 0.2 + 0.02 * rng.standard_normal(100)
    high = 0.8 + 0.02 * rng.standard_normal(100)
    # mirror the clusters exactly so the fitted mixture is symmetric about 0.5
    low = 0.2 + (low - low.mean())
    high = 0.8 - (low - 0.2)
    thr, reason = threshold_unsupervised([*low, *high])
    assert reason.startswith("ok")
    assert thr == pytest.approx(0.5, abs=1e-6)


def test_gmm_unbalanced_clusters_cut_is_the_bayes_boundary():
    # equal-variance clusters (standardised exactly), 9:1 weights: the posterior
    # crosses 0.5 at mid + var / (m_hi - m_lo) * ln(w_lo / w_hi), nearer the small one
    rng = np.random.default_rng(1)

    def cluster(mean, n):
        z = rng.standard_normal(n)
        return mean + 0.03 * (z - z.mean()) / z.std()

    scores = [*cluster(0.1, 180), *cluster(0.9, 20)]
    thr, reason = threshold_unsupervised(scores)
    assert reason.startswith("ok")
    var = 0.03**2 + 1e-6  # sklearn's reg_covar is added to each variance
    assert thr == pytest.approx(0.5 + var / 0.8 * np.log(9), abs=1e-6)
    assert max(scores[:180]) < thr < min(scores[180:])
    # deterministic: fixed random_state
    assert threshold_unsupervised(scores) == (thr, reason)


def test_gmm_separates_hand_made_clusters():
    scores = [0.01, 0.02, 0.03, 0.05, 0.04, 0.02, 0.97, 0.95, 0.99, 0.96]
    cal = calibrate(scores, None, "gmm")
    assert 0.05 < cal.threshold < 0.95
    assert not cal.details["fallback"]
    assert cal.details["means"][0] < cal.threshold < cal.details["means"][1]


@pytest.mark.parametrize(
    ("scores", "why"), [([0.3] * 20, "equal"), ([0.7], "fewer"), ([], "fewer")]
)
def test_gmm_degenerate_scores_fall_back_to_half(scores, why):
    thr, reason = threshold_unsupervised(scores)
    assert thr == 0.5
    assert reason.startswith("fallback") and why in reason


def test_gmm_one_gaussian_falls_back_and_says_so():
    rng = np.random.default_rng(2)
    scores = list(0.3 + 0.05 * rng.standard_normal(400))
    thr, reason = threshold_unsupervised(scores)
    assert thr == 0.5
    assert reason.startswith("fallback")
    cal = calibrate(scores, method="gmm")
    assert cal.details["fallback"] and cal.details["reason"] == reason


# ---- calibrate() ------------------------------------------------------------------------
def test_calibrate_dispatches_and_reports_in_sample_metrics():
    cal = calibrate(SEP_SCORES, SEP_LABELS, "fpr", target_fpr=0.0)
    assert isinstance(cal, Calibration)
    assert cal.method == "fpr" and cal.threshold == np.nextafter(0.4, 1.0)
    assert cal.details["target_fpr"] == 0.0
    ach = cal.details["achieved"]
    assert ach["fpr"] == 0.0 and ach["recall"] == 1.0 and ach["auc"] == 1.0
    assert calibrate(SEP_SCORES, SEP_LABELS, "f1").threshold == pytest.approx(0.5)
    gmm = calibrate(SEP_SCORES, SEP_LABELS, "gmm")
    assert 0.4 < gmm.threshold < 0.6 and "achieved" in gmm.details
    json.dumps(gmm.details)  # details are plain JSON for run reports


def test_calibrate_errors():
    with pytest.raises(OptimusError, match="needs labelled"):
        calibrate(SEP_SCORES, None, "fpr")
    with pytest.raises(OptimusError, match="needs labelled"):
        calibrate(SEP_SCORES, [None] * len(SEP_SCORES), "f1")
    with pytest.raises(OptimusError, match="method"):
        calibrate(SEP_SCORES, SEP_LABELS, "roc")  # type: ignore[arg-type]


# ---- the bundled dev set ----------------------------------------------------------------
def test_devset_parses_and_is_balanced_enough():
    text = resources.files("optimus_lib").joinpath("resources/devset.jsonl").read_text("utf-8")
    recs = [json.loads(line) for line in text.splitlines() if line.strip()]
    samples = [parse_record(r, i) for i, r in enumerate(recs)]
    assert 56 <= len(samples) <= 72
    assert len({s.id for s in samples}) == len(samples)
    cats: dict[str, set[int | None]] = {}
    for s in samples:
        cats.setdefault(s.category or "", set()).add(s.label)
        assert s.response.strip() and all(t.strip() for t in s.context)
    toxic = {"toxicity_agreement", "risky_advice", "biased_opinion", "offensive"}
    assert set(cats) == toxic | {"safe", "safe_rude_looking"}
    assert all(cats[c] == {1} for c in toxic)
    assert cats["safe"] == cats["safe_rude_looking"] == {0}
    counts = {c: sum(s.category == c for s in samples) for c in cats}
    assert all(8 <= n <= 12 for n in counts.values()), counts
