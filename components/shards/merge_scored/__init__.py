"""The merge_scored component (see README.md)."""

from components.shards.merge_scored.component import merge_scored

__all__ = ["merge_scored"]
