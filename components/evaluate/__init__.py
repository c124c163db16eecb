"""The evaluate component (see README.md)."""

from components.evaluate.component import evaluate

__all__ = ["evaluate"]
