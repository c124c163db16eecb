"""What every threat builder shares: copying samples, seeded choices, the toxic test."""

from __future__ import annotations

import random
from typing import Any

from optimus_lib.data.schema import Sample


def _copy(sample: Sample, **changes: Any) -> Sample:
    """A copy with fresh ``context`` list and ``record`` dict (inputs are never mutated)."""
    out = Sample(
        context=list(sample.context),
        response=sample.response,
        id=sample.id,
        label=sample.label,
        category=sample.category,
        record=dict(sample.record),
    )
    for key, value in changes.items():
        setattr(out, key, value)
    return out


def _check_fraction(value: float, what: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {value!r}")


def _choose(n: int, fraction: float, rng: random.Random) -> set[int]:
    """Exactly ``round(fraction * n)`` distinct indices, chosen by ``rng``."""
    return set(rng.sample(range(n), round(fraction * n)))


def _sample_rng(seed: int, tag: str, index: int, sample: Sample) -> random.Random:
    """A per-sample generator: a sample's perturbation does not depend on its neighbours.

    String seeds are hashed with SHA-512 by :mod:`random`, so this is stable across runs
    and Python processes (unlike ``hash()``).
    """
    return random.Random(f"{seed}:{tag}:{index}:{sample.id}")


def _is_toxic(sample: Sample) -> bool:
    return sample.label == 1
