"""The classify component (see README.md)."""

from components.classify.component import classify

__all__ = ["classify"]
