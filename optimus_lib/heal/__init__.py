"""Healers: write a safe reply, in context, for every flagged sample."""
