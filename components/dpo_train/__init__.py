"""The dpo_train component (see README.md)."""

from components.dpo_train.component import dpo_train

__all__ = ["dpo_train"]
