"""Evaluation metrics on tiny inputs with answers worked out by hand."""

from __future__ import annotations

import math

import pytest

from optimus_lib.evaluate.metrics import distinct_n, is_deflection, is_refusal, refusal_rate, rtr
from optimus_lib.evaluate.stats import rtr_diff_interval, rtr_interval


def test_rtr_counts_scores_at_or_above_threshold():
    assert rtr([0.1, 0.5, 0.9, 0.49]) == 0.5
    assert rtr([0.2, 0.3], threshold=0.25) == 0.5
    assert math.isnan(rtr([]))


def test_distinct_n_known_answers():
    # "a b a" + "a b": unigrams a,b,a,a,b -> 2 unique / 5; bigrams (a b),(b a),(a b) -> 2/3
    assert distinct_n(["a b a", "A b"], 1) == pytest.approx(2 / 5)
    assert distinct_n(["a b a", "A b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["one"], 2) == 0.0


@pytest.mark.parametrize(
    "text, refuses",
    [
        ("I'm sorry, I can't help with that.", True),
        ("As an AI, I have no opinion.", True),
        ("I'd rather not talk about it.", True),
        ("Sorry to hear that! What happened next?", False),
        ("I can help you plan the trip.", False),
    ],
)
def test_refusal_patterns(text, refuses):
    assert is_refusal(text) is refuses
    assert is_deflection(text) is (refuses or "sorry" in text.lower())


@pytest.mark.parametrize(
    "text",
    ["I'm so sorry for any misunderstanding.", "I apologize for the confusion.", "Apologies!"],
)
def test_heal_rejects_every_apology_that_the_refusal_measure_misses(text):
    assert is_deflection(text) and not is_refusal(text)


def test_refusal_rate():
    assert refusal_rate(["I am unable to do that", "sure, here it is"]) == 0.5
    assert math.isnan(refusal_rate([]))


def test_rtr_interval_degenerate_and_bounds():
    assert rtr_interval([[1.0, 1.0], [0.9]]) == (1.0, 1.0)
    assert rtr_interval([[0.0], [0.1, 0.2]]) == (0.0, 0.0)
    lo, hi = rtr_interval([[1, 0], [0, 0], [1, 1], [0, 0]])
    point = rtr([1, 0, 0, 0, 1, 1, 0, 0])
    assert 0.0 <= lo < point < hi <= 1.0
    assert all(math.isnan(x) for x in rtr_interval([]))


def test_rtr_interval_resamples_contexts_not_replies():
    # 10 contexts x 10 replies, half the contexts always toxic: per-reply resampling
    # would give a narrow interval around 0.5; per-context resampling a wide one.
    clustered = [[1.0] * 10] * 5 + [[0.0] * 10] * 5
    lo, hi = rtr_interval(clustered, seed=1)
    assert hi - lo > 0.4
    spread = [[1.0] * 5 + [0.0] * 5] * 10  # same RTR, but every context alike
    assert rtr_interval(spread, seed=1) == (0.5, 0.5)


def test_rtr_diff_interval_is_paired():
    a = [[1.0, 0.0]] * 4 + [[0.0, 0.0]] * 4
    assert rtr_diff_interval(a, a) == (0.0, 0.0)
    assert rtr_diff_interval([[1.0]] * 5, [[0.0]] * 5) == (1.0, 1.0)
    # b = a plus one extra toxic reply in every context: the difference is exactly -1/3
    # under any resample, although each model's own RTR swings with the contexts drawn
    a = [[1.0, 0.0, 0.0]] * 3 + [[0.0, 0.0, 0.0]] * 3
    b = [[1.0, 1.0, 0.0]] * 3 + [[1.0, 0.0, 0.0]] * 3
    lo, hi = rtr_diff_interval(a, b)
    assert lo == pytest.approx(-1 / 3) and hi == pytest.approx(-1 / 3)
    assert rtr_interval(a)[1] - rtr_interval(a)[0] > 0.2
    with pytest.raises(ValueError, match="paired"):
        rtr_diff_interval([[1.0]], [])


def test_evaluate_model_reports_the_context_evaluator_beside_the_first(tiny_engine):
    """A second evaluator judges the same replies in their context: its rates are the
    ``*_context`` metrics and each row's ``toxicity_context``; the first is unchanged."""
    from helpers import StubDetector

    from optimus_lib.data.schema import Sample
    from optimus_lib.evaluate.runner import evaluate_model

    tox = [Sample(context=["they all deserve it"], response="", id=f"t{i}") for i in range(2)]
    ben = [Sample(context=["hi there"], response="hello!", id="b1")]
    reply_only = StubDetector(fn=lambda s: 0.0)
    in_context = StubDetector(fn=lambda s: 1.0 if "deserve" in s.context[-1] else 0.0)
    metrics, rows = evaluate_model(
        tiny_engine, tox, ben, reply_only, 3, False, context_evaluator=in_context
    )
    assert metrics["rtr_toxic"] == 0.0 and metrics["rtr_toxic_context"] == 1.0
    assert metrics["rtr_benign_context"] == 0.0 and metrics["mean_toxicity_toxic_context"] == 1.0
    assert [r["toxicity_context"] for r in rows] == [1.0, 1.0, 0.0]
    # it judged the generated replies, not the empty reference responses
    assert [s.response for s in in_context.calls[0]] == [r["reply"] for r in rows[:2]]
    alone, rows = evaluate_model(tiny_engine, tox, ben, reply_only, 3, False)
    assert "rtr_toxic_context" not in alone and "toxicity_context" not in rows[0]
