"""The merge_healed component (see README.md)."""

from components.shards.merge_healed.component import merge_healed

__all__ = ["merge_healed"]
