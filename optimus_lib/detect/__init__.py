"""Stage 1: score every sample's response in its context, and flag the toxic ones.

Detectors are built by name (:func:`build_detector`); each module registers itself when
first asked for, so importing this package stays light (no torch).
"""

from optimus_lib.detect.base import DETECTORS, Detector, build_detector, known_detectors, register

__all__ = ["DETECTORS", "Detector", "build_detector", "known_detectors", "register"]
