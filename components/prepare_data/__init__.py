"""The prepare_data component (see README.md)."""

from components.prepare_data.component import prepare_data

__all__ = ["prepare_data"]
