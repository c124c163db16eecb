"""The robustness experiment: its settings (:mod:`.config`), the comparison of its arms
and the promotion (:mod:`.compare`), and the adaptive-attack tables (:mod:`.attacks`).
Statistics live in :mod:`optimus_lib.evaluate.stats`."""

from optimus_lib.experiment.config import (
    ComparisonSettings,
    ExperimentConfig,
    Promotion,
    load_experiment,
)

__all__ = ["ComparisonSettings", "ExperimentConfig", "Promotion", "load_experiment"]
