"""The record_rejection component (see README.md)."""

from components.record_rejection.component import record_rejection

__all__ = ["record_rejection"]
