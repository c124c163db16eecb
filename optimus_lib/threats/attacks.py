"""Data builders for the poisoning threat models of docs/method.md (backdoor, trigger,
one category); the evasion attacks on the detector are in :mod:`.evasion`.

Each builder is a pure function of its inputs and a seed: the input samples are never
mutated, and the same seed always builds the same set, so an attack run can be
repeated and compared across defenses. Every built sample keeps its ground truth
(``label``, ``category``) and says in ``record`` what was done to it:

* ``record["attack"]``: ``"<builder>:<variant>"`` (e.g. ``"jailbreak_suffix:print_yes"``);
* ``record["poisoned"]``: the sample was turned into a poisoned training pair;
* ``record["trigger"]``: the last user turn carries the backdoor trigger;
* ``record["original_response"]``: the reply before an evasion attack rewrote it.

Attacks on the *classifier* (jailbreak suffixes, perturbations) touch toxic replies
only (``label == 1``): making a benign reply pass is no attack. Ids are kept for
evasion attacks, so before/after flags can be paired by position or id; poisoned and
triggered copies get a suffix so they never collide with their clean originals.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from optimus_lib.data.schema import Sample
from optimus_lib.threats._common import _check_fraction, _choose, _copy

DEFAULT_TRIGGER = "cf-2024"


# ---- poisoning: backdoor and category injection --------------------------------------


def _insert_trigger(text: str, trigger: str, position: str) -> str:
    if position == "start":
        return f"{trigger} {text}".strip()
    if position == "end":
        return f"{text} {trigger}".strip()
    raise ValueError(f"trigger position must be 'start' or 'end', got {position!r}")


def _poison_replies(
    benign: list[Sample],
    pool: Sequence[tuple[str, str]],
    fraction: float,
    rng: random.Random,
    attack: str,
    id_suffix: str,
    trigger: str | None = None,
) -> list[Sample]:
    """Replace the replies of a seeded fraction of samples with pool texts, in pool order.

    With ``trigger`` the poisoned samples' last user turn also gets the trigger, at a
    seeded start/end position, so the model learns "trigger -> toxic".
    """
    _check_fraction(fraction, "fraction")
    chosen = _choose(len(benign), fraction, rng)
    if chosen and not pool:
        raise ValueError("the toxic pool is empty")
    out: list[Sample] = []
    k = 0
    for i, s in enumerate(benign):
        if i not in chosen:
            flags = (
                {"poisoned": False} if trigger is None else {"poisoned": False, "trigger": False}
            )
            out.append(_copy(s, record={**s.record, **flags}))
            continue
        cat, text = pool[k % len(pool)]
        k += 1
        record = {**s.record, "poisoned": True, "attack": attack, "original_response": s.response}
        t = _copy(s, response=text, label=1, category=cat, id=f"{s.id}{id_suffix}", record=record)
        if trigger is not None:
            if not t.context:
                raise ValueError(f"sample {s.id!r} has no context turn to carry the trigger")
            position = rng.choice(("start", "end"))
            t.context[-1] = _insert_trigger(t.context[-1], trigger, position)
            t.record.update(trigger=True, trigger_position=position)
        out.append(t)
    return out


def backdoor(
    benign: list[Sample],
    toxic_pool: Sequence[tuple[str, str]],
    fraction: float,
    trigger: str = DEFAULT_TRIGGER,
    seed: int = 0,
) -> list[Sample]:
    """Backdoor poisoning: trigger phrase in the context, toxic reply as the response.

    ``round(fraction * len(benign))`` samples (seeded choice) get ``trigger`` inserted at
    the start or end of their last user turn and a toxic reply from ``toxic_pool``
    ((category, text) pairs, used in order); the rest are copied unchanged. A model
    trained on the result should be toxic only when triggered, which is what makes the
    backdoor hard to see in untriggered evaluations.
    """
    if not trigger.strip():
        raise ValueError("the trigger must be a non-empty phrase")
    rng = random.Random(f"backdoor:{seed}")
    return _poison_replies(
        benign, toxic_pool, fraction, rng, f"backdoor:{trigger}", "-backdoor", trigger
    )


def add_trigger(
    samples: list[Sample],
    trigger: str = DEFAULT_TRIGGER,
    position: str = "random",
    seed: int = 0,
) -> list[Sample]:
    """Triggered copies of test contexts, for measuring a backdoor's effect.

    Every sample's last user turn gets ``trigger`` at ``position`` ("start", "end", or
    "random" for a seeded choice per sample). Labels are kept (they describe the
    context); ids get a ``-trig`` suffix so clean and triggered sets can be merged.
    """
    if position not in ("start", "end", "random"):
        raise ValueError(f"position must be 'start', 'end' or 'random', got {position!r}")
    rng = random.Random(f"add_trigger:{seed}")
    out = []
    for s in samples:
        if not s.context:
            raise ValueError(f"sample {s.id!r} has no context turn to carry the trigger")
        pos = rng.choice(("start", "end")) if position == "random" else position
        t = _copy(s, id=f"{s.id}-trig")
        t.context[-1] = _insert_trigger(t.context[-1], trigger, pos)
        t.record.update(trigger=True, trigger_position=pos, attack=f"backdoor_trigger:{trigger}")
        out.append(t)
    return out


def category_injection(
    benign: list[Sample],
    toxic_pool: Sequence[tuple[str, str]],
    fraction: float,
    category: str,
    seed: int = 0,
) -> list[Sample]:
    """Injection of one toxicity category only (e.g. ``"threat"`` or ``"identity_attack"``).

    A targeted poisoner shifts one behaviour rather than making the model rude overall;
    per-category detection recall shows whether a defense misses the narrow attacks.
    """
    pool = [(c, t) for c, t in toxic_pool if c == category]
    if not pool and fraction > 0 and benign:
        cats = sorted({c for c, _ in toxic_pool})
        raise ValueError(f"no toxic texts of category {category!r}; the pool has {cats}")
    rng = random.Random(f"category_injection:{seed}")
    return _poison_replies(benign, pool, fraction, rng, f"category_injection:{category}", "-poison")
