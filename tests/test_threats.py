"""Threat-model training sets in the pipeline, and backdoor evaluation with the trigger."""

from __future__ import annotations

import pytest

from optimus.config import DataConfig
from optimus.data.poison import build_threat_set
from optimus.errors import OptimusError


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

    from optimus.data.attacks import add_trigger
    from optimus.data.schema import Sample
    from optimus.evaluate.runner import evaluate_model

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
