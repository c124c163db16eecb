"""Stage 2: a prosocial reply, in context, for every flagged dialog; re-scored.

Inputs are classify's scored records and the threshold classify used (an explicit
value, never read off a shared object). Outputs, both JSONL:

* the SFT set: every record in input order; flagged ones get the healed reply in place
  of the original (``healed: true`` plus ``heal`` provenance: generator, prompt version,
  attempts, re-score, fallback). Unflagged records pass through untouched.
* the preferences: TRL's conversational DPO format, one pair per flagged dialog whose
  healed reply differs from the original: ``prompt`` (the context as messages),
  ``chosen`` (healed) and ``rejected`` (the original flagged reply).

Healed replies are re-scored by ``rescore_detector`` at ``rescore_threshold`` (default:
the classify threshold). That detector sees text without ground truth, so it must not be
the label-reading oracle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from optimus_lib.data.io import read_jsonl, write_jsonl
from optimus_lib.data.schema import Sample, parse_record
from optimus_lib.errors import OptimusError
from optimus_lib.progress import staged
from optimus_lib.settings import BUNDLED_MODEL, DetectorName, ModelSpec, Strict
from optimus_lib.stages import file_digest, obj_digest

FIXED_REPLY = (
    "I'm sorry, I'd rather not continue in that direction. Thanks for talking with me, "
    "though. Is there something else you'd like to chat about?"
)


class HealSettings(Strict):
    """Contextual (aligned-model) or fixed-reply healing."""

    mode: Literal["contextual", "fixed"] = "contextual"
    model: ModelSpec = BUNDLED_MODEL  # the aligned model that writes healed replies
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    temperature: float = Field(0.7, gt=0.0)
    max_new_tokens: int = Field(48, ge=1, le=1024)
    retries: int = Field(2, ge=0)
    # Retry safe replies that refuse or apologise (healer.py: they teach over-refusal).
    reject_refusals: bool = True
    # Also retry any apology ("I'm so sorry for any misunderstanding"), which the refusal
    # pattern misses (metrics.is_deflection). Off until measured over the whole table.
    reject_apologies: bool = False
    batch_size: int = Field(16, ge=1)
    # Re-scores healed replies: llm-judge with a non-bundled model, else stack ("auto").
    # Never the label-reading oracle: a healed reply has no label.
    rescore_detector: DetectorName = "auto"
    rescore_threshold: float | None = Field(None, ge=0.0, le=1.0)
    fixed_reply: str = FIXED_REPLY
    seed: int = 0
    engine: Literal["auto", "transformers", "vllm"] = "auto"
    # float32 | bfloat16 | float16; auto: bfloat16 on a GPU, float32 on a CPU (transformers),
    # the checkpoint's own dtype (vLLM)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    trust_remote_code: bool = False

    @field_validator("rescore_detector")
    @classmethod
    def _no_oracle(cls, v: str) -> str:
        if "oracle" in v:
            raise ValueError(
                "the oracle reads labels and healed replies have none; name a text detector "
                "(e.g. wordlist)"
            )
        return v


@dataclass
class HealResult:
    n: int
    flagged: int
    healed: int  # flagged records with a generated reply that passed the re-score
    fallbacks: int  # flagged records that got the fixed reply
    mean_attempts: float
    pairs: int
    refusals: int = 0  # healed replies that still refuse (every attempt did)

    def as_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


def build_healer(settings: HealSettings, threshold: float):
    """The healer the settings describe (the one place it is assembled)."""
    from optimus_lib.heal.healer import ContextualHealer, FixedHealer

    h = settings
    if h.mode == "fixed":
        return FixedHealer(h.fixed_reply)
    from optimus_lib.detect.base import DetectorOptions, build_detector
    from optimus_lib.models.engine import build_engine

    engine = build_engine(
        h.model, h.engine, h.device, h.trust_remote_code, h.batch_size, dtype=h.dtype
    )
    opts = DetectorOptions(
        model=h.model,
        device=h.device,
        engine=h.engine,
        dtype=h.dtype,
        batch_size=h.batch_size,
        trust_remote_code=h.trust_remote_code,
        threshold=threshold if h.rescore_threshold is None else h.rescore_threshold,
        shared={"engines": {h.model: engine}},  # judge and healer on one loaded model
    )
    return ContextualHealer(
        engine,
        build_detector(h.rescore_detector, opts),
        h.fixed_reply,
        h.model,
        h.top_p,
        h.temperature,
        h.max_new_tokens,
        h.retries,
        h.seed,
        h.reject_refusals,
        h.reject_apologies,
    )


def _flagged_samples(scored: Path, start: int = 0) -> tuple[list[dict], list[Sample], list[int]]:
    recs = read_jsonl(scored)
    samples, flagged_idx = [], []
    for i, r in enumerate(recs):
        if not isinstance(r.get("flagged"), bool):
            raise OptimusError(f"{scored}:{i + 1}: no boolean 'flagged' field (classify first)")
        try:
            samples.append(parse_record(r, start + i))
        except ValueError as exc:
            raise OptimusError(f"{scored}:{i + 1}: {exc}") from None
        if r["flagged"]:
            flagged_idx.append(i)
    return recs, samples, flagged_idx


def replace_response(record: dict, reply: str) -> dict:
    """A copy of a record (either shape) whose judged reply is ``reply``."""
    out = dict(record)
    if "messages" in out:
        msgs = [dict(m) for m in out["messages"]]
        last = max(i for i, m in enumerate(msgs) if m.get("role") == "assistant")
        msgs[last]["content"] = reply
        out["messages"] = msgs
    else:
        out["response"] = reply
    return out


def _reusable(path: Path | None) -> dict[str, dict]:
    """Healed replies of an earlier heal output, by content of (context, original reply)."""
    if path is None:
        return {}
    out = {}
    for i, r in enumerate(read_jsonl(path)):
        if r.get("healed") is True and "original_response" in r.get("heal", {}):
            s = parse_record(r, i)
            out[obj_digest([s.context, r["heal"]["original_response"]])] = r["heal"]
    return out


@staged("heal")
def heal(
    settings: HealSettings,
    scored: Path,
    threshold: float,
    sft_out: Path,
    preferences_out: Path,
    reuse: Path | None = None,
    start: int = 0,
) -> HealResult:
    """Heal every flagged record; write the SFT set and the DPO preferences.

    ``reuse``: an earlier SFT set healed with the same settings from a superset of these
    flags (a recall sweep heals the unweakened scan once); its replies are taken instead
    of generated again. ``start``: the index of the first record in the whole dataset
    (a shard's offset), so records without an ``id`` keep the one they have unsharded.
    """
    from optimus_lib.distributed import is_main_process, sharded_map
    from optimus_lib.heal.healer import HealResult as Healed

    recs, samples, idx = _flagged_samples(scored, start)
    flagged = [samples[i] for i in idx]
    known = _reusable(reuse)
    keys = [obj_digest([s.context, s.response]) for s in flagged]
    todo = [s for s, k in zip(flagged, keys) if k not in known]
    healer = build_healer(settings, threshold) if todo else None
    key = obj_digest([file_digest(scored), threshold, settings.model_dump()])[:16]
    rows = (
        sharded_map(todo, lambda xs: [r.__dict__ for r in healer.heal(xs)], Path(sft_out), key)
        if todo
        else []
    )
    for s, r in zip(todo, rows):
        known[obj_digest([s.context, s.response])] = {**r, "original_response": s.response}
    fields = ("reply", "attempts", "score", "fallback", "generator", "prompt_version", "refusal")
    results = [Healed(**{f: known[k][f] for f in fields if f in known[k]}) for k in keys]
    if not is_main_process():
        return HealResult(len(recs), len(flagged), 0, 0, 0.0, 0)
    by_index = dict(zip(idx, results))
    sft = []
    for i, r in enumerate(recs):
        h = by_index.get(i)
        if h is None:
            sft.append(r)
        else:
            prov = {**h.__dict__, "original_response": samples[i].response}
            sft.append({**replace_response(r, h.reply), "healed": True, "heal": prov})
    pairs = [
        {
            "id": s.id,
            "prompt": s.prompt_messages(),
            "chosen": [{"role": "assistant", "content": h.reply}],
            "rejected": [{"role": "assistant", "content": s.response}],
        }
        for s, h in zip(flagged, results)
        if h.reply.strip() != s.response.strip()
    ]
    write_jsonl(sft_out, sft)
    write_jsonl(preferences_out, pairs)
    return HealResult(
        n=len(recs),
        flagged=len(flagged),
        healed=sum(not h.fallback for h in results),
        fallbacks=sum(h.fallback for h in results),
        mean_attempts=sum(h.attempts for h in results) / max(1, len(results)),
        pairs=len(pairs),
        refusals=sum(h.refusal for h in results),
    )


def merge_healed(
    shards: list[tuple[Path, Path, dict[str, float]]], sft_out: Path, preferences_out: Path
) -> HealResult:
    """The healed shards ``(sft, preferences, their heal metrics)``, in order, as one
    SFT set and one preference set, with the metrics summed: what an unsharded heal of
    the whole dataset writes (every record's reply depends on that record alone)."""
    sft = [r for path, _, _ in shards for r in read_jsonl(path)]
    pairs = [r for _, path, _ in shards for r in read_jsonl(path)]
    counts = ("n", "flagged", "healed", "fallbacks", "pairs", "refusals")
    total = {k: sum(int(m.get(k, 0)) for _, _, m in shards) for k in counts}
    # each shard's mean times its flagged count is its (whole) number of attempts
    attempts = sum(round(m.get("mean_attempts", 0.0) * m.get("flagged", 0)) for *_, m in shards)
    if total["n"] != len(sft) or total["pairs"] != len(pairs):
        raise OptimusError(
            f"heal: the shards' metrics count {total['n']} records and {total['pairs']} "
            f"pairs, their files {len(sft)} and {len(pairs)}"
        )
    write_jsonl(sft_out, sft)
    write_jsonl(preferences_out, pairs)
    return HealResult(mean_attempts=attempts / max(1, total["flagged"]), **total)
