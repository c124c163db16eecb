"""Stage 1: score every sample's response in its context, and flag the toxic ones."""

# Importing the modules registers their detectors by name.
from optimus.detect import ensemble, hf_classifier, lexical, llm_judge, oracle  # noqa: F401,E402,I001
from optimus.detect.base import DETECTORS, Detector, build_detector, register
from optimus.detect.metrics import classification_metrics

__all__ = ["DETECTORS", "Detector", "build_detector", "register", "classification_metrics"]
