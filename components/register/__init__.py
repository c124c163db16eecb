"""The register component (see README.md)."""

from components.register.component import register

__all__ = ["register"]
