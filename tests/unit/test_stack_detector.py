"""The default offline detector (``stack``): its data, its calibration file, its quality.

The quality test is real: it scores the shipped held-out test set with the shipped
calibration and fails below the issue's targets (AUC >= 0.85, FPR <= 0.2 at the default
threshold). It loads MiniLM (~20 s on a busy 2-core machine), so the scoring is shared by
the tests of this module.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from typer.testing import CliRunner

from optimus_lib.data.io import read_samples
from optimus_lib.detect.base import DetectorOptions, build_detector, resolve_auto, resolved_name
from optimus_lib.detect.metrics import classification_metrics
from optimus_lib.detect.stack import (
    FEATURES,
    StackDetector,
    StackParams,
    load_params,
    params_path,
)
from optimus_lib.errors import OptimusError
from optimus_lib.settings import BUNDLED_MODEL

DATA = params_path().parent


@pytest.fixture(scope="module")
def test_scores() -> tuple[list, list[float]]:
    samples = read_samples(DATA / "test.jsonl")
    return samples, build_detector("stack").score(samples)


def test_shipped_detector_meets_the_targets_on_the_held_out_set(test_scores):
    samples, scores = test_scores
    q = classification_metrics([s.label for s in samples], scores, 0.5)
    assert q is not None and q["n"] == len(samples) >= 250
    assert q["auc"] >= 0.85, q
    assert q["fpr"] <= 0.2, q
    assert q["recall"] >= 0.5, q  # not bought by flagging almost nothing


def test_agreeing_with_a_toxic_turn_scores_above_agreeing_with_a_benign_one(test_scores):
    samples, scores = test_scores

    def mean(cat: str) -> float:
        return float(np.mean([v for s, v in zip(samples, scores) if s.category == cat]))

    assert mean("toxicity_agreement") > mean("safe_agreement") + 0.2
    assert mean("toxicity_agreement") > mean("safe_refusal") + 0.2


def test_scan_with_defaults_does_not_flag_everything(tmp_path):
    from cli import app

    src = DATA / "test.jsonl"
    out = tmp_path / "scored.jsonl"
    r = CliRunner().invoke(app, ["scan", str(src), "-o", str(out)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    ids = [json.loads(x)["id"] for x in src.read_text().splitlines()]
    assert [x["id"] for x in rows] == ids  # every record, in input order
    flagged = [x["flagged"] for x in rows]
    assert 0 < sum(flagged) < len(rows)
    safe_flagged = [f for x, f in zip(rows, flagged) if x["label"] == "safe"]
    assert sum(safe_flagged) <= 0.2 * len(safe_flagged)
    assert "precision" in r.output and "recall" in r.output and "AUC" in r.output
    assert "with stack" in r.output


def test_auto_is_the_stack_unless_a_judge_model_is_configured():
    from optimus_lib.config import PipelineSettings
    from optimus_lib.stages.classify import ClassifySettings
    from optimus_lib.stages.heal import HealSettings

    assert ClassifySettings().detector == "auto"
    assert HealSettings().rescore_detector == "auto"
    assert PipelineSettings().stage("classify").detector == "auto"
    assert resolve_auto(BUNDLED_MODEL) == "stack"
    assert resolve_auto("") == "stack"
    assert resolve_auto("Qwen/Qwen2.5-7B-Instruct@abc123") == "llm-judge"
    assert resolve_auto("/models/my-judge") == "llm-judge"
    assert resolved_name("max(auto,wordlist)", BUNDLED_MODEL) == "max(stack,wordlist)"
    assert resolved_name("auto+lexical", "org/judge@1") == "llm-judge+lexical"
    assert resolved_name("llm-judge", BUNDLED_MODEL) == "llm-judge"
    det = build_detector("auto", DetectorOptions(model=BUNDLED_MODEL))
    assert isinstance(det, StackDetector)  # built lazily: MiniLM loads on first score


def test_calibration_file_loads_without_pickle(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("pickle used to load the calibration")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    params = load_params()
    assert params.text_head.coef.shape == (384,) and params.agree_head.coef.shape == (384,)
    assert params.stack.coef.shape == (len(FEATURES),)
    raw = json.loads(params_path().read_text())
    assert raw["meta"]["trained_on"].endswith("dev.jsonl")
    assert params_path().stat().st_size < 100_000


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.update(format=99), "format"),
        (lambda r: r["text_head"].update(coef=[0.0] * 3), "text_head.coef"),
        (lambda r: r["stack"].update(intercept="1; import os"), "stack.intercept"),
        (lambda r: r.update(shift=float("nan")), "shift"),
        (lambda r: r.update(features=["lexical"]), "features"),
    ],
)
def test_a_damaged_calibration_file_is_one_clear_error(tmp_path, change, message):
    raw = json.loads(params_path().read_text())
    change(raw)
    bad = tmp_path / "stack.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(OptimusError, match=message):
        load_params(bad)
    bad.write_text("{not json")
    with pytest.raises(OptimusError, match="not valid JSON"):
        load_params(bad)


def test_params_round_trip():
    p = load_params()
    again = StackParams.from_json(json.loads(json.dumps(p.to_json())))
    assert np.array_equal(again.text_head.coef, p.text_head.coef)
    assert again.shift == p.shift


def test_dev_and_test_sets_are_valid_and_disjoint():
    dev = read_samples(DATA / "dev.jsonl")
    test = read_samples(DATA / "test.jsonl")
    for split in (dev, test):
        assert 250 <= len(split) <= 400
        assert all(s.label in (0, 1) and s.category for s in split)
        cats = {s.category for s in split}
        assert {"insult", "threat", "profanity", "toxicity_agreement"} <= cats
        assert {"benign", "safe_lookalike", "safe_refusal", "safe_quote"} <= cats
    pairs = lambda xs: {(s.context[-1], s.response) for s in xs}  # noqa: E731
    assert not pairs(dev) & pairs(test)
    written = lambda xs: {s.response for s in xs if s.record["source"] == "template"}  # noqa: E731
    assert not written(dev) & written(test)  # hand-written pools differ between the sets


def test_the_sets_are_rebuilt_byte_for_byte_by_the_script():
    from tools.build_detector_sets import build_split, render

    for split in ("dev", "test"):
        assert render(build_split(split)) == (DATA / f"{split}.jsonl").read_text("utf-8")


PADDINGS = ("friendly_suffix", "friendly_prefix", "ignore_print_yes")


def test_padding_does_not_dilute_the_stack_on_the_dev_set():
    """Friendly text appended or prepended, or an injection appended, to every reply of
    the dev set: toxic recall stays within 0.05 of the plain replies' and FPR on the
    (equally padded) safe replies stays <= 0.2. Without windows it does not (the
    whole-reply score loses about a third of the recall; BENCHMARKS.md)."""
    from optimus_lib.threats.evasion import apply_jailbreak

    dev = read_samples(DATA / "dev.jsonl")
    labels = [s.label for s in dev]
    det = build_detector("stack")

    def quality(samples):
        q = classification_metrics(labels, det.score(samples), det.threshold)
        assert q is not None
        return q

    plain = quality(dev)
    for kind in PADDINGS:
        q = quality([s.with_response(apply_jailbreak(s.response, kind)) for s in dev])
        assert q["recall"] >= plain["recall"] - 0.05, (kind, q, plain)
        assert q["fpr"] <= 0.2, (kind, q)
    assert plain["fpr"] <= 0.2
    whole = StackDetector(det.params, window_words=None)
    prefixed = [s.with_response(apply_jailbreak(s.response, "friendly_prefix")) for s in dev]
    q = classification_metrics(labels, whole.score(prefixed), 0.5)
    assert q is not None and q["recall"] < plain["recall"] - 0.05  # the test can fail


def test_the_contextual_evaluator_is_fitted_apart_and_sees_agreement_on_unseen_dialogs():
    """``contextual`` (evaluate's second RTR) is the stack fitted on the *test* set
    without the word features; on the dev set, which it never saw, it catches agreement
    with a toxic turn, which the reply-only ``lexical`` evaluator cannot."""
    from optimus_lib.detect.contextual import ContextualEvaluator
    from optimus_lib.detect.contextual import params_path as ctx_path

    raw = json.loads(ctx_path().read_text())
    assert raw["meta"]["trained_on"].endswith("test.jsonl")
    assert raw["meta"]["dropped_features"] == ["lexical", "wordlist"]
    assert raw["stack"]["coef"][:2] == [0.0, 0.0]
    ours = load_params()
    assert raw["text_head"]["coef"] != ours.text_head.to_json()["coef"]
    ev = build_detector("contextual")
    assert isinstance(ev, ContextualEvaluator) and ev.window_words is not None
    dev = read_samples(DATA / "dev.jsonl")
    scores = ev.score(dev)
    q = classification_metrics([s.label for s in dev], scores, 0.5)
    assert q is not None and q["auc"] >= 0.85 and q["fpr"] <= 0.2, q
    agree = [i for i, s in enumerate(dev) if s.category == "toxicity_agreement"]
    lexical = build_detector("lexical").score([dev[i] for i in agree])
    assert np.mean([scores[i] >= 0.5 for i in agree]) >= 0.6
    assert np.mean([v >= 0.5 for v in lexical]) <= 0.1
