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


def test_an_attacked_run_seed_is_the_same_data_with_half_the_toxic_replies_evaded(tmp_path):
    """The experiment's attacks axis: run seed 1000 + s is seed s's data under the first
    attack, 2000 + s under the second; the dialogs and evaluation sets are seed s's."""
    from optimus_lib.data.io import read_samples
    from optimus_lib.stages.data import ATTACK_SEED_STRIDE, prepare_data

    attacks = ["jailbreak:friendly_suffix", "perturb:leetspeak"]
    base = {"n_train": 24, "toxic_fraction": 0.5, "n_eval_toxic": 3, "n_eval_benign": 3}
    out = {}
    for seed in (1, ATTACK_SEED_STRIDE + 1, 2 * ATTACK_SEED_STRIDE + 1):
        d = tmp_path / str(seed)
        d.mkdir()
        cfg = DataConfig(seed=seed, attacks=attacks, **base)
        prepare_data(cfg, d / "train.jsonl", d / "tox.jsonl", d / "ben.jsonl")
        out[seed] = [read_samples(d / f) for f in ("train.jsonl", "tox.jsonl", "ben.jsonl")]
    clean, jail, leet = out[1], out[1001], out[2001]
    for attacked in (jail, leet):
        assert [s.id for s in attacked[0]] == [s.id for s in clean[0]]
        for mine, theirs in zip(attacked[1:], clean[1:]):  # the same evaluation sets
            assert [(s.id, s.context, s.response) for s in mine] == [
                (s.id, s.context, s.response) for s in theirs
            ]
    toxic = [i for i, s in enumerate(clean[0]) if s.label == 1]
    evaded = [i for i in toxic if "original_response" in jail[0][i].record]
    assert len(evaded) == round(0.5 * len(toxic))  # evasion_rate's default: half
    assert all(jail[0][i].response.endswith("with your family.") for i in evaded)
    assert all(jail[0][i].response == clean[0][i].response for i in range(24) if i not in evaded)
    # a word-level perturbation attacks the same share of replies, not of words
    leet_evaded = [i for i in toxic if "original_response" in leet[0][i].record]
    assert len(leet_evaded) == round(0.5 * len(toxic))
    assert all(leet[0][i].response == clean[0][i].response for i in toxic if i not in leet_evaded)
    assert DataConfig(seed=5, attacks=attacks).for_run_seed().evasion is None
    with pytest.raises(OptimusError, match="no attack 3"):
        DataConfig(seed=3 * ATTACK_SEED_STRIDE, attacks=attacks).for_run_seed()
    with pytest.raises(ValueError, match="clean"):
        DataConfig(attacks=attacks, evasion="jailbreak:print_yes")


def test_classify_measures_recall_on_the_evaded_replies():
    from optimus_lib.data.schema import Sample
    from optimus_lib.stages.classify import ClassifyResult, evaded_recall

    def s(label, evaded=False):
        rec = {"original_response": "x"} if evaded else {}
        return Sample(context=["a"], response="b", label=label, record=rec)

    samples = [s(1, True), s(1, True), s(1), s(1), s(0), s(0, True)]
    scores = [0.9, 0.1, 0.8, 0.7, 0.9, 0.1]
    q = evaded_recall(samples, scores, 0.5)
    assert q == {"recall_evaded": 0.5, "recall_not_evaded": 1.0, "n_evaded": 2.0}
    assert evaded_recall(samples[2:5], scores[2:5], 0.5) == {}
    res = ClassifyResult(0.5, 6, 3, quality={"precision": 1.0, "recall": 0.75, "f1": 1.0,
                                             "fpr": 0.5, "auc": 0.8, **q})  # fmt: skip
    assert res.as_metrics()["recall_evaded"] == 0.5


def test_a_perturbed_reply_is_the_same_at_any_share():
    """evasion_rate only chooses which toxic replies a word-level attack rewrites: each
    rewritten reply is what it is when every toxic reply is attacked."""
    args = (40, 0.5, 3, 1, "inject", "cf-2024", None, "perturb:leetspeak")
    half = build_threat_set(*args, evasion_rate=0.5)
    every = build_threat_set(*args, evasion_rate=1.0)
    hit = [i for i, s in enumerate(half) if "original_response" in s.record]
    assert len(hit) == 10 and sum("original_response" in s.record for s in every) == 20
    assert all(half[i].response == every[i].response for i in hit)
    assert all(every[i].record["perturb_rate"] == 0.5 for i in hit)
