"""Scoring a reply by its parts as well as whole, so padding cannot dilute it.

A detector that reads the whole reply can be fooled by adding harmless text: a toxic
sentence followed by "Anyway, I hope you have a lovely day and enjoy the sunshine with
your family." averages out, and a friendly opener breaks a cue that looks at how the
reply starts ("Yes, exactly." after a hateful turn). Measured on the held-out test set,
the ``stack`` detector's recall fell from 0.79 to 0.53 with that sentence appended and to
0.40 with "Thanks for sharing, that is a great question." prepended (docs/detection.md).

The remedy is the max over parts: the reply is scored whole and as each of its
*windows* (its sentences, and runs of :data:`WINDOW_WORDS` words at half-window strides,
since many toxic replies are unpunctuated fragments), all in the same context, and the
highest score wins. Added text can then only add suspicion: the toxic part is still one
of the windows, scored on its own. The cost is one extra score per window (a reply of
``w`` words has about ``2 w / WINDOW_WORDS`` word windows), and a little more false
positives, since a safe reply gets more chances to look toxic; the FPR measured on the
held-out set is in BENCHMARKS.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from optimus_lib.data.schema import Sample

#: Words per window; 16 covers nearly every toxic sentence of the detector sets.
WINDOW_WORDS = 16

_SENTENCE = re.compile(r"(?<=[.!?\n])\s+")


def reply_windows(text: str, words: int = WINDOW_WORDS) -> list[str]:
    """The parts of ``text`` scored beside it: its sentences (when it has more than one)
    and its runs of ``words`` words at stride ``words // 2`` (when it is longer), each
    once and never the whole text itself. ``words <= 0`` gives sentences only."""
    whole = " ".join(text.split())
    parts = [p.strip() for p in _SENTENCE.split(text.strip()) if p.strip()]
    out = parts if len(parts) > 1 else []
    tokens = text.split()
    if words > 0 and len(tokens) > words:
        stride = max(1, words // 2)
        for start in range(0, len(tokens) - words + stride, stride):
            out.append(" ".join(tokens[start : start + words]))
    return [w for w in dict.fromkeys(" ".join(p.split()) for p in out) if w and w != whole]


def max_over_windows(
    score: Callable[[list[Sample]], Sequence[float]],
    samples: list[Sample],
    words: int = WINDOW_WORDS,
) -> list[float]:
    """Each sample's score: the max of ``score`` on its whole reply and on each of its
    :func:`reply_windows` (same context). ``score`` is called once, on every sample and
    every window together, so a detector batches them as it likes."""
    if not samples:
        return []
    expanded = list(samples)
    owner: list[int] = []
    for i, s in enumerate(samples):
        for w in reply_windows(s.response, words):
            expanded.append(s.with_response(w))
            owner.append(i)
    scores = [float(v) for v in score(expanded)]
    out = scores[: len(samples)]
    for i, v in zip(owner, scores[len(samples) :]):
        out[i] = max(out[i], v)
    return out
