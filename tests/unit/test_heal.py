"""Healing: fixed replies, and contextual healing's re-score / retry / fallback loop."""

from __future__ import annotations

import pytest
from helpers import StubDetector

from optimus_lib.data.schema import Sample
from optimus_lib.heal.healer import ContextualHealer, FixedHealer, _tidy

FALLBACK = "Let's talk about something else."


class ScriptedEngine:
    """Stands in for TransformersEngine: replies come from a script, one list per call."""

    def __init__(self, script: list[list[str]]):
        self.script = list(script)
        self.calls: list[dict] = []

    def chat_ids(self, messages, add_generation_prompt=True):
        # encode the last user turn's text length so prompts are distinguishable
        return [len(messages), len(messages[-1]["content"])]

    def generate(self, prompts, **kwargs):
        self.calls.append({"prompts": list(prompts), **kwargs})
        replies = self.script.pop(0)
        assert len(replies) == len(prompts)
        return replies


def _toxic_word(s: Sample) -> float:
    return 1.0 if "idiot" in s.response else 0.0


def _samples() -> list[Sample]:
    return [
        Sample(context=["you are dumb"], response="no, YOU are an idiot", id="a"),
        Sample(context=["hello", "hi", "I hate my neighbours"], response="idiots, all", id="b"),
        Sample(context=["nice weather"], response="shut up idiot", id="c"),
    ]


def test_fixed_healer():
    res = FixedHealer("Sorry, let's move on.").heal(_samples())
    assert [r.reply for r in res] == ["Sorry, let's move on."] * 3
    assert all(not r.fallback and r.generator == "fixed" for r in res)


def test_contextual_healer_retries_then_falls_back():
    engine = ScriptedEngine(
        [
            ["What an idiot thing to say.", "I'm sorry you feel that way.", ""],
            ["Still an idiot, honestly.", "That sounds like a lovely day today."],
            ["idiot idiot idiot"],
        ]
    )
    det = StubDetector(_toxic_word)
    healer = ContextualHealer(engine, det, FALLBACK, "stub-model", retries=2, seed=10)
    res = healer.heal(_samples())
    assert len(res) == 3
    # sample a: flagged on every attempt -> fixed fallback after 1 + retries attempts
    assert res[0].reply == FALLBACK and res[0].fallback is True and res[0].attempts == 3
    assert res[0].score is None
    # sample b: clean on the first try
    assert res[1].reply == "I'm sorry you feel that way."
    assert res[1].fallback is False and res[1].attempts == 1 and res[1].score == 0.0
    # sample c: empty first reply is retried; clean on the second try
    assert res[2].reply == "That sounds like a lovely day today."
    assert res[2].attempts == 2 and res[2].fallback is False
    assert all(r.generator == "stub-model" for r in res)
    # only pending samples are regenerated, with fresh seeds and nucleus sampling
    assert [len(c["prompts"]) for c in engine.calls] == [3, 2, 1]
    # each retry draws new per-record seeds: no seed repeats across calls
    seeds = [x for c in engine.calls for x in c["seeds"]]
    assert [len(c["seeds"]) for c in engine.calls] == [3, 2, 1] and len(set(seeds)) == 6
    assert all(c["do_sample"] and c["top_p"] == 0.95 for c in engine.calls)
    # the healed reply was re-scored in its original context
    rescored = det.calls[0]
    assert [s.context for s in rescored] == [s.context for s in _samples()]
    assert rescored[1].response == "I'm sorry you feel that way."


def test_contextual_healer_retries_refusals():
    """reject_refusals: a safe reply that refuses (with reject_apologies, or apologises:
    "I'm so sorry", which the over-refusal measure's pattern misses) is retried; when
    every attempt refuses, the last safe refusal is kept (marked), not the fixed reply;
    toxic still falls back."""
    engine = ScriptedEngine(
        [
            ["I'm sorry, I can't help with that.", "I'm sorry, I can't do that.", "idiot"],
            ["Oh nice, which part did you like best?", "I'm so sorry for any mix-up!", "idiot"],
            ["I won't answer that.", "idiot"],
        ]
    )
    det = StubDetector(_toxic_word)
    healer = ContextualHealer(
        engine, det, FALLBACK, "m", retries=2, reject_refusals=True, reject_apologies=True
    )
    a, b, c = healer.heal(_samples())
    assert a.reply == "Oh nice, which part did you like best?"
    assert a.attempts == 2 and not a.refusal and not a.fallback
    assert b.reply == "I won't answer that." and b.refusal and not b.fallback
    assert b.attempts == 3
    assert c.reply == FALLBACK and c.fallback and not c.refusal
    assert [len(x["prompts"]) for x in engine.calls] == [3, 3, 2]
    # off (the class default): the first safe reply is kept, refusal or not
    engine = ScriptedEngine([["I'm sorry, I can't help with that."]])
    (r,) = ContextualHealer(engine, det, FALLBACK, "m").heal(_samples()[:1])
    assert r.reply == "I'm sorry, I can't help with that." and not r.refusal
    # refusals only: an apology that does not refuse is kept
    engine = ScriptedEngine([["I'm so sorry for any mix-up!"]])
    (r,) = ContextualHealer(engine, det, FALLBACK, "m", reject_refusals=True).heal(_samples()[:1])
    assert r.reply == "I'm so sorry for any mix-up!" and r.attempts == 1 and not r.refusal


def test_contextual_healer_zero_retries():
    engine = ScriptedEngine([["idiot!", "Thanks for sharing that with me."]])
    res = ContextualHealer(engine, StubDetector(_toxic_word), FALLBACK, "m", retries=0).heal(
        _samples()[:2]
    )
    assert res[0].fallback and res[0].attempts == 1 and res[0].reply == FALLBACK
    assert not res[1].fallback
    assert len(engine.calls) == 1


def test_contextual_healer_prompt_has_system_and_context():
    seen = []

    class Recorder(ScriptedEngine):
        def chat_ids(self, messages, add_generation_prompt=True):
            seen.append(messages)
            return [0]

    ContextualHealer(Recorder([["Okay, thank you!"]]), None, FALLBACK, "m").heal([_samples()[1]])
    msgs = seen[0]
    assert msgs[0]["role"] == "system"
    assert [m["content"] for m in msgs[1:]] == ["hello", "hi", "I hate my neighbours"]
    assert msgs[-1]["role"] == "user"
    assert "idiots, all" not in str(msgs)  # the toxic reply is never shown to the healer


def test_tidy():
    assert _tidy("Hello there, how are you doing? I was thinking that we") == (
        "Hello there, how are you doing?"
    )
    assert _tidy("Sure thing.  User1: now say something bad") == "Sure thing."
    assert _tidy("  many\n spaces  ") == "many spaces"


def test_healed_replies_are_rescored_without_the_originals_label():
    """Regression: a label-reading detector (oracle) once re-flagged every healed reply
    because the healed sample kept the original's label=1, so all fell back."""
    engine = ScriptedEngine([["That sounds hard, I'm here to listen."]])
    seen = []

    def by_label(s: Sample) -> float:
        seen.append(s.label)
        return 1.0 if s.label == 1 else 0.0

    toxic = Sample(context=["hi"], response="shut up idiot", id="t", label=1)
    res = ContextualHealer(engine, StubDetector(by_label), FALLBACK, "m", retries=0).heal([toxic])
    assert seen == [None]
    assert not res[0].fallback and res[0].reply.startswith("That sounds hard")
    assert toxic.label == 1  # the input sample is untouched


def test_oracle_rescoring_error_names_the_fix():
    from optimus_lib.detect.oracle import OracleDetector
    from optimus_lib.errors import OptimusError

    with pytest.raises(OptimusError, match="rescore_detector"):
        OracleDetector().score([Sample(context=["a"], response="b")])


def test_healed_reply_depends_only_on_its_record(tiny_engine):
    """Per-record seeds: a dialog healed among others, alone, or after a re-ordering gets
    the same reply (sweeps with other arms and sharded runs agree record by record)."""
    healer = ContextualHealer(tiny_engine, None, FALLBACK, "tiny", max_new_tokens=6, seed=5)
    samples = _samples()
    together = [r.reply for r in healer.heal(samples)]
    alone = healer.heal([samples[1]])[0].reply
    reordered = [r.reply for r in healer.heal(samples[::-1])][::-1]
    assert together[1] == alone
    assert together == reordered
    other_seed = ContextualHealer(tiny_engine, None, FALLBACK, "tiny", max_new_tokens=6, seed=6)
    assert [r.reply for r in other_seed.heal(samples)] != together


def test_healer_passes_one_seed_per_pending_record():
    engine = ScriptedEngine([["fine", "ok", "sure"]])
    ContextualHealer(engine, None, FALLBACK, "scripted", retries=0, seed=1).heal(_samples())
    seeds = engine.calls[0]["seeds"]
    assert len(seeds) == 3 and len(set(seeds)) == 3
