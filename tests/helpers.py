"""Test helpers shared by several test modules (stubs and tiny file writers)."""

from __future__ import annotations

import sys
from pathlib import Path

from optimus_lib.data.schema import Sample
from optimus_lib.detect.base import Detector

OPTIMUS_CLI = [sys.executable, "-m", "optimus_lib.cli"]


class StubDetector(Detector):
    """Scores from a function of the sample (or a fixed list), for wrapper tests."""

    def __init__(self, fn=None, scores=None, name="stub", threshold=0.5):
        self.fn = fn
        self.scores = scores
        self.name = name
        self.threshold = threshold
        self.calls: list[list[Sample]] = []

    def score(self, samples):
        self.calls.append(list(samples))
        if self.scores is not None:
            return list(self.scores)
        return [float(self.fn(s)) for s in samples]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
