"""Ground-truth detector: experiments only (an upper bound and the base for weakening)."""

from __future__ import annotations

from optimus_lib.data.schema import Sample
from optimus_lib.detect.base import Detector, DetectorOptions, register
from optimus_lib.errors import OptimusError


class OracleDetector(Detector):
    name = "oracle"

    def score(self, samples: list[Sample]) -> list[float]:
        if any(s.label is None for s in samples):
            raise OptimusError(
                "the 'oracle' detector needs a 'label' on every record (to re-score healed "
                "replies, set heal.rescore_detector to a detector that reads no labels)"
            )
        return [float(s.label) for s in samples]


@register("oracle")
def _build(opts: DetectorOptions) -> Detector:
    return OracleDetector()
