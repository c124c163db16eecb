"""The Detector interface and its registry by name (garak's plugin idea, kept small).

A detector maps samples to toxicity scores in [0, 1], higher meaning more toxic. Flagging
is a threshold on top, so calibration and deliberate weakening are wrappers rather than
special cases inside each detector.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from optimus_lib.data.schema import Sample
from optimus_lib.errors import OptimusError


class Detector(ABC):
    """Scores samples; ``threshold`` turns scores into flags."""

    name: str = "detector"
    threshold: float = 0.5

    @abstractmethod
    def score(self, samples: list[Sample]) -> list[float]:
        """Toxicity score in [0, 1] of each sample's response in its context."""

    def flag(self, scores: list[float]) -> list[bool]:
        return [s >= self.threshold for s in scores]


@dataclass
class DetectorOptions:
    """Settings a detector factory may use; each factory ignores what it doesn't need."""

    model: str | None = None
    device: str = "auto"
    engine: str = "auto"  # auto | transformers | vllm
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    batch_size: int = 16
    max_prompt_tokens: int = 512
    paraphrases: int = 1
    trust_remote_code: bool = False
    threshold: float = 0.5
    shared: dict[str, Any] = field(default_factory=dict)  # e.g. an already loaded engine


DETECTORS: dict[str, Callable[[DetectorOptions], Detector]] = {}

# Where each built-in detector registers itself. Modules are imported only when their
# detector is asked for, so the light image (and ``optimus --help``) never imports torch.
BUILTIN: dict[str, str] = {
    "llm-judge": "optimus_lib.detect.llm_judge",
    "lexical": "optimus_lib.detect.lexical",
    "wordlist": "optimus_lib.detect.wordlist",
    "hf-classifier": "optimus_lib.detect.hf_classifier",
    "oracle": "optimus_lib.detect.oracle",
    "stack": "optimus_lib.detect.stack",
    "contextual": "optimus_lib.detect.contextual",
}

# ``auto`` (the default everywhere) picks the LLM judge only when a judge model other than
# the bundled 135M one is configured: that one is at chance on labelled data
# (BENCHMARKS.md, "Default detector"), so without a capable judge the calibrated offline
# ``stack`` detector scores instead.
AUTO = "auto"


def resolve_auto(model: str | None) -> str:
    """The detector ``auto`` stands for, given the configured judge model."""
    from optimus_lib.settings import BUNDLED_MODEL

    return "stack" if not model or model.strip() == BUNDLED_MODEL else "llm-judge"


def resolved_name(name: str, model: str | None) -> str:
    """``name`` with every ``auto`` replaced by what it stands for (for lineage/reports)."""
    import re

    return re.sub(r"(?<![\w-])auto(?![\w-])", resolve_auto(model), name.strip())


def known_detectors() -> list[str]:
    return sorted({*DETECTORS, *BUILTIN, AUTO})


def detector_parts(name: str) -> tuple[str, list[str]]:
    """``(reduce, part names)`` of a detector expression: ``max(a,b)``, ``a+b`` or ``a``."""
    name = name.strip()
    if name.startswith("max(") and name.endswith(")"):
        return "max", [p.strip() for p in name[4:-1].split(",")]
    if "+" in name:
        return "mean", [p.strip() for p in name.split("+")]
    return "", [name]


def check_detector_name(name: str) -> str:
    """``name`` when every detector it names is known (nothing is imported or built);
    else one OptimusError. Settings call it when they are read."""
    reduce, parts = detector_parts(name)
    if reduce and len(parts) < 2:
        raise OptimusError(f"detector {name!r}: an ensemble needs two or more detectors")
    for part in parts:
        if part not in known_detectors():
            known = ", ".join(known_detectors())
            raise OptimusError(f"unknown detector {part!r} (known: {known}; combine with a+b)")
    return name.strip()


def check_evaluator_independent(
    evaluators: list[str], detectors: list[str], model: str | None = None
) -> None:
    """One OptimusError when an evaluator is also one of the ``detectors`` (classify's
    detector, heal's re-scoring detector) or shares a part with one (``auto`` resolved
    with the judge ``model`` first): it would grade a defense by the judge that chose its
    training data. ``contextual`` and ``stack`` are different detectors (fitted on
    disjoint sets) of one design, so they may meet; docs/detection.md says what that
    shares."""
    used: set[str] = set()
    for d in detectors:
        used |= set(detector_parts(resolved_name(d, model))[1])
    for ev in evaluators:
        parts = set(detector_parts(resolved_name(ev, model))[1])
        same = sorted(parts & used)
        if same:
            raise OptimusError(
                f"evaluator {ev!r}: {', '.join(same)} also chose or re-scored the training "
                "data, so it would grade the defense by its own judge; pick an evaluator "
                "that shares no detector with them"
            )


def register(name: str):
    """Class/factory decorator adding a detector to the registry under ``name``."""

    def deco(factory):
        DETECTORS[name] = factory
        return factory

    return deco


def build_detector(name: str, options: DetectorOptions | None = None) -> Detector:
    """Build a detector by registry name; ``a+b`` is the mean ensemble of ``a`` and ``b``,
    ``max(a,b)`` the max ensemble, ``auto`` the LLM judge when ``options.model`` names a
    judge other than the bundled one and ``stack`` otherwise."""
    from optimus_lib.detect.ensemble import EnsembleDetector

    opts = options or DetectorOptions()
    reduce, parts = detector_parts(name)
    if reduce:
        det: Detector = EnsembleDetector([build_detector(p, opts) for p in parts], reduce=reduce)
    else:
        name = parts[0]
        if name == AUTO:
            name = resolve_auto(opts.model)
        if name not in DETECTORS and name in BUILTIN:
            import importlib

            importlib.import_module(BUILTIN[name])
        if name not in DETECTORS:
            known = ", ".join(known_detectors())
            raise OptimusError(f"unknown detector {name!r} (known: {known}; combine with a+b)")
        det = DETECTORS[name](opts)
    det.threshold = opts.threshold
    return det
