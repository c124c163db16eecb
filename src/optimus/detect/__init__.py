"""Stage 1: score every sample's response in its context, and flag the toxic ones."""

# Importing the modules registers their detectors by name.
from optimus.detect import (  # noqa: F401,I001
    ensemble,
    hf_classifier,
    lexical,
    llm_judge,
    oracle,
    wordlist,
)
from optimus.detect.base import DETECTORS, Detector, build_detector, register
from optimus.detect.metrics import classification_metrics

__all__ = ["DETECTORS", "Detector", "build_detector", "register", "classification_metrics"]
