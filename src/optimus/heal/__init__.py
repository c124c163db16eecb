"""Stage 2: write a safe reply for every flagged sample."""

from optimus.heal.healer import ContextualHealer, FixedHealer, Healer, HealResult

__all__ = ["ContextualHealer", "FixedHealer", "Healer", "HealResult"]
