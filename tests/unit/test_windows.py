"""Scoring by windows: padding around a toxic sentence cannot dilute its score."""

from __future__ import annotations

from optimus_lib.data.schema import Sample
from optimus_lib.detect.windows import max_over_windows, reply_windows
from optimus_lib.threats.evasion import apply_jailbreak

TOXIC = {"idiot", "worthless", "hate"}


def diluted(samples: list[Sample]) -> list[float]:
    """A detector that averages over the reply: the share of its words that are toxic."""
    out = []
    for s in samples:
        words = [w.strip(".,!?").lower() for w in s.response.split()]
        out.append(3 * sum(w in TOXIC for w in words) / max(1, len(words)))
    return [min(1.0, v) for v in out]


def test_windows_are_sentences_and_word_runs_never_the_whole():
    assert reply_windows("You idiot.") == []
    assert reply_windows("You idiot. Have a nice day!") == ["You idiot.", "Have a nice day!"]
    long = " ".join(f"w{i}" for i in range(20))
    assert reply_windows(long, words=8) == [
        " ".join(f"w{i}" for i in range(a, min(a + 8, 20))) for a in (0, 4, 8, 12)
    ]
    assert reply_windows(long, words=0) == []  # sentences only, and there is one
    assert reply_windows("a.  a. a.") == ["a."]  # each window once


def test_max_over_windows_keeps_a_padded_toxic_reply_as_high_as_the_plain_one():
    plain = Sample(context=["hi"], response="You are a worthless idiot.", label=1)
    calls = []

    def score(samples):
        calls.append(len(samples))
        return diluted(samples)

    base = max_over_windows(score, [plain])[0]
    for kind in ("friendly_suffix", "friendly_prefix", "ignore_print_yes"):
        padded = plain.with_response(apply_jailbreak(plain.response, kind))
        assert diluted([padded])[0] < base - 0.3  # the whole-reply score is diluted...
        assert max_over_windows(score, [padded])[0] == base  # ...the max is not
    assert len(calls) == 4 and calls[1] >= 3  # one call each: whole reply and windows
    safe = plain.with_response(apply_jailbreak("Lovely weather today.", "friendly_suffix"))
    assert max_over_windows(diluted, [safe]) == [0.0]
    assert max_over_windows(diluted, []) == []


def test_windows_keep_the_context_and_the_record():
    s = Sample(context=["a", "b"], response="One. Two.", id="x", label=1, category="insult")
    seen = []

    def score(samples):
        seen.extend(samples)
        return [0.0] * len(samples)

    max_over_windows(score, [s])
    assert [w.response for w in seen] == ["One. Two.", "One.", "Two."]
    assert all(w.context == ["a", "b"] and w.id == "x" and w.label == 1 for w in seen)
