"""Per-record seeds: a sampled output depends only on its record and the run's seed.

Sampling from one random stream shared by a whole batch makes each reply depend on
which other records were in the run: add a shard, or widen the set of flagged dialogs,
and every later reply changes. Deriving a seed from the run's seed and the record's
identity (its id, or a digest of its text when it has none) makes a healed or evaluated
reply a function of that record alone, so sharded and unsharded runs, and sweeps with
different arms, agree record by record. (A record that comes without an id is given its
position in the input as id when it is read, so its seed moves with its position.)
"""

from __future__ import annotations

import hashlib

from optimus_lib.data.schema import Sample

_SEED_BITS = 63  # a torch.Generator seed and a vLLM request seed both take this range


def derive_seed(seed: int, *parts: object) -> int:
    """A stable 63-bit seed from the run's seed and any identifying parts.

    sha256 rather than ``hash()``: Python salts string hashes per process, and the
    seed must be the same in every pod and on every re-run.
    """
    text = "\x1f".join([str(seed), *(str(p) for p in parts)])
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - _SEED_BITS)


def record_key(sample: Sample) -> str:
    """The record's identity: its id, else a digest of its context and response."""
    if sample.id:
        return f"id:{sample.id}"
    body = "\x1e".join([*sample.context, sample.response])
    return "sha:" + hashlib.sha256(body.encode("utf-8")).hexdigest()[:32]


def record_seeds(seed: int, samples: list[Sample], *parts: object) -> list[int]:
    """One derived seed per sample (``parts`` tell apart attempts or replies)."""
    return [derive_seed(seed, record_key(s), *parts) for s in samples]
