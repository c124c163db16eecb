"""The robustness experiment: its settings (:mod:`.config`, with the ``attacks`` axis:
the same methods on attacked data), the comparison of its arms and the promotion
(:mod:`.compare`). Statistics live in :mod:`optimus_lib.evaluate.stats`."""

from optimus_lib.experiment.config import (
    ComparisonSettings,
    ExperimentConfig,
    Promotion,
    load_experiment,
)

__all__ = ["ComparisonSettings", "ExperimentConfig", "Promotion", "load_experiment"]
