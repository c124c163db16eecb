"""Lexical profanity classifier (alt-profanity-check: a linear SVM over words).

Fast (~2 ms a reply) and independent of any LLM, which makes it the default *evaluator*
for RTR; it sees the response only, so it misses contextual toxicity (agreeing with a
hateful turn) by design.
"""

from __future__ import annotations

from optimus_lib.data.schema import Sample
from optimus_lib.detect.base import Detector, DetectorOptions, register
from optimus_lib.errors import OptimusError


def profanity_probs(texts: list[str]) -> list[float]:
    try:
        from profanity_check import predict_prob
    except ImportError:
        raise OptimusError(
            "the 'lexical' detector needs alt-profanity-check: pip install alt-profanity-check"
        ) from None
    if not texts:
        return []
    return [float(p) for p in predict_prob(texts)]


class LexicalDetector(Detector):
    name = "lexical"

    def score(self, samples: list[Sample]) -> list[float]:
        return profanity_probs([s.response for s in samples])


@register("lexical")
def _build(opts: DetectorOptions) -> Detector:
    return LexicalDetector()
