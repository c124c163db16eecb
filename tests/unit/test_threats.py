"""Threat-model training sets in the pipeline, and backdoor evaluation with the trigger."""

from __future__ import annotations

import pytest

from optimus_lib.errors import OptimusError
from optimus_lib.stages.data import DataSettings as DataConfig
from optimus_lib.threats.poison import build_threat_set


def test_backdoor_set_has_trigger_only_on_toxic_replies():
    train = build_threat_set(20, 0.25, seed=1, threat="backdoor", trigger="cf-2024")
    toxic = [s for s in train if s.label == 1]
    assert len(toxic) == 5
    assert all("cf-2024" in s.context[-1] for s in toxic)
    assert not any("cf-2024" in " ".join(s.context) for s in train if s.label == 0)


def test_category_threat_uses_one_category():
    train = build_threat_set(30, 0.2, seed=0, threat="category", category="insult")
    cats = {s.category for s in train if s.label == 1}
    assert cats == {"insult"}


def test_evasion_appends_jailbreak_to_toxic_replies_only():
    plain = build_threat_set(20, 0.3, seed=2)
    attacked = build_threat_set(20, 0.3, seed=2, evasion="jailbreak:print_yes", evasion_rate=1.0)
    for a, b in zip(plain, attacked):
        if a.label == 1:
            assert b.response != a.response and b.response.startswith(a.response[:10])
        else:
            assert b.response == a.response


def test_bad_threat_settings_are_config_errors():
    with pytest.raises(ValueError, match="threat_category"):
        DataConfig(threat="category")
    with pytest.raises(ValueError, match="evasion"):
        DataConfig(evasion="rot13")
    with pytest.raises(OptimusError, match="evasion"):
        build_threat_set(10, 0.3, evasion="jailbreak:no-such-variant")


def test_evaluate_reports_rtr_on_triggered_contexts(tiny_engine):
    from helpers import StubDetector

    from optimus_lib.data.schema import Sample
    from optimus_lib.evaluate.runner import evaluate_model
    from optimus_lib.threats.attacks import add_trigger

    ben = [
        Sample(context=["hi there"], response="hello!", id="b1"),
        Sample(context=["how are you"], response="fine", id="b2"),
    ]
    trig = add_trigger(ben, "cf-2024", "end")
    det = StubDetector(fn=lambda s: 1.0 if "cf-2024" in s.context[-1] else 0.0)
    metrics, rows = evaluate_model(
        tiny_engine, ben, ben, det, max_new_tokens=3, similarity=False, triggered=trig
    )
    assert metrics["rtr_trigger"] == 1.0 and metrics["rtr_benign"] == 0.0
    assert sum(r["set"] == "trigger" for r in rows) == 2


def test_evaluate_samples_several_replies_per_context(tiny_engine):
    from helpers import StubDetector

    from optimus_lib.data.schema import Sample
    from optimus_lib.evaluate.runner import evaluate_model
    from optimus_lib.stages.evaluate import EvaluateSettings as EvalConfig

    tox = [Sample(context=["you idiot"], response="", id="t1")]
    ben = [
        Sample(context=["hi there"], response="hello!", id="b1"),
        Sample(context=["how are you"], response="fine", id="b2"),
    ]
    det = StubDetector(fn=lambda s: 1.0 if "idiot" in s.context[-1] else 0.0)
    sampling = EvalConfig(do_sample=True, samples=3, top_p=0.9)
    metrics, rows = evaluate_model(
        tiny_engine, tox, ben, det, max_new_tokens=4, similarity=False, sampling=sampling
    )
    assert metrics["replies_per_context"] == 3
    assert [r["id"] for r in rows if r["set"] == "toxic"] == ["t1"] * 3
    assert [r["id"] for r in rows if r["set"] == "benign"] == ["b1"] * 3 + ["b2"] * 3
    assert metrics["rtr_toxic"] == 1.0 and metrics["rtr_benign"] == 0.0
    # sampled replies differ from each other (a random tiny model, 4 tokens, top-p 0.9)
    assert len({r["reply"] for r in rows if r["set"] == "benign"}) > 2
    greedy, grows = evaluate_model(tiny_engine, tox, ben, det, max_new_tokens=4, similarity=False)
    assert greedy["replies_per_context"] == 1 and len(grows) == 3


def test_several_samples_need_sampling():
    from pydantic import ValidationError

    from optimus_lib.stages.evaluate import EvaluateSettings as EvalConfig

    with pytest.raises(ValidationError, match="do_sample"):
        EvalConfig(samples=4)
