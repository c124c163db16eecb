"""The heal component (see README.md)."""

from components.heal.component import heal

__all__ = ["heal"]
