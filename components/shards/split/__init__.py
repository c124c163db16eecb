"""The split component (see README.md)."""

from components.shards.split.component import split

__all__ = ["split"]
