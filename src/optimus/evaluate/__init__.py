"""Stage 4: response toxicity rate (RTR), utility and over-refusal of a trained model."""

from optimus.evaluate.metrics import distinct_n, refusal_rate, rtr
from optimus.evaluate.runner import evaluate_model

__all__ = ["distinct_n", "evaluate_model", "refusal_rate", "rtr"]
