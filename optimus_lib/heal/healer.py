"""Healers: contextual (an aligned model writes a prosocial reply) and fixed-reply.

Contextual healing keeps the dialog's context and asks an aligned model for a kind,
non-judgemental reply to the last turn (nucleus sampling, as in the paper). Each record
samples with its own seed, derived from the run's seed, its id and the attempt
(:mod:`optimus_lib.seeds`): its healed reply does not depend on which other dialogs were
flagged with it, or on the shard it landed in. Each healed
reply is re-scored by the scan detector; a flagged or empty reply is retried with a new
sample, and after ``retries`` failures the fixed neutral reply is used, so a hostile
context can never push a toxic "healed" reply into training.

With ``reject_refusals`` a safe reply that refuses ("I'm sorry, ...", "I can't help ...",
:func:`optimus_lib.evaluate.metrics.is_refusal`; with ``reject_apologies`` any apology
too, "I'm so sorry for any misunderstanding": ``is_deflection``) is retried too: healed
replies are the *chosen* side of DPO, and most flagged dialogs have a harmless context
(the injected reply is the toxic part), so refusals there teach the model to refuse
benign prompts (over-refusal). When every attempt refuses, the last safe refusal is kept
(``refusal: true``), not the fixed reply, which is itself a deflection.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from optimus_lib.data.schema import Sample
from optimus_lib.detect.base import Detector
from optimus_lib.seeds import record_seeds

if TYPE_CHECKING:  # torch is imported only by the code that runs a model
    from optimus_lib.models.engine import TransformersEngine

PROMPT_VERSION = "heal-v2"

# v1 ("a kind, respectful conversation partner ... if the conversation turns hostile,
# calmly steer it somewhere positive") got apologies and refusals from the bundled model
# for ordinary chit-chat ("I'm sorry for any confusion, I'm here to help"): 3 of 9 healed
# replies in the quickstart data (BENCHMARKS.md "Over-refusal"). v2 asks for an
# in-context continuation first and keeps the safety rules.
SYSTEM = (
    "You are a friendly person in a casual chat. Write your next message: answer the "
    "other person's last message directly and on topic, in one or two short sentences, "
    "the way a warm, interested friend would, and keep the conversation going. Do not "
    "apologise, refuse or talk about yourself as an assistant. Never insult, swear, "
    "threaten, agree with hateful or harmful statements, or give dangerous advice; if the "
    "other person is hostile, stay calm and kind and move the chat somewhere positive."
)


@dataclass
class HealResult:
    """A healed reply with its provenance (kept in heal.jsonl for audits)."""

    reply: str
    attempts: int
    score: float | None
    fallback: bool
    generator: str
    prompt_version: str
    refusal: bool = False  # kept although it refuses (every attempt did; reject_refusals)


class Healer(ABC):
    @abstractmethod
    def heal(self, samples: list[Sample]) -> list[HealResult]:
        """One safe reply per sample, in order."""


class FixedHealer(Healer):
    """Non-contextual healing (the paper's ablation): one fixed reply for every sample."""

    def __init__(self, reply: str) -> None:
        self.reply = reply

    def heal(self, samples: list[Sample]) -> list[HealResult]:
        return [HealResult(self.reply, 0, None, False, "fixed", "fixed") for _ in samples]


class ContextualHealer(Healer):
    """Generates replies in context with an aligned model, then re-scores them."""

    def __init__(
        self,
        engine: TransformersEngine,
        detector: Detector | None,
        fallback_reply: str,
        generator_name: str,
        top_p: float = 0.95,
        temperature: float = 0.7,
        max_new_tokens: int = 48,
        retries: int = 2,
        seed: int = 0,
        reject_refusals: bool = False,
        reject_apologies: bool = False,
    ) -> None:
        self.engine = engine
        self.detector = detector
        self.fallback_reply = fallback_reply
        self.generator_name = generator_name
        self.top_p = top_p
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.retries = retries
        self.seed = seed
        self.reject_refusals = reject_refusals
        self.reject_apologies = reject_apologies

    def _prompt(self, sample: Sample) -> list[int]:
        msgs = [{"role": "system", "content": SYSTEM}, *sample.prompt_messages()]
        return self.engine.chat_ids(msgs)

    def heal(self, samples: list[Sample]) -> list[HealResult]:
        from optimus_lib.evaluate.metrics import is_deflection, is_refusal

        refuses = is_deflection if self.reject_apologies else is_refusal
        results: list[HealResult | None] = [None] * len(samples)
        refused: dict[int, HealResult] = {}  # the last safe reply that refused, per sample
        pending = list(range(len(samples)))
        prompts = {i: self._prompt(samples[i]) for i in pending}
        for attempt in range(1, self.retries + 2):
            if not pending:
                break
            replies = self.engine.generate(
                [prompts[i] for i in pending],
                max_new_tokens=self.max_new_tokens,
                do_sample=True,
                top_p=self.top_p,
                temperature=self.temperature,
                seeds=record_seeds(self.seed, [samples[i] for i in pending], "heal", attempt),
            )
            replies = [_tidy(r) for r in replies]
            healed = [samples[i].with_response(r) for i, r in zip(pending, replies)]
            for h in healed:  # a new reply has no ground truth: never reuse the original's
                h.label = None
            scores = self.detector.score(healed) if self.detector else [0.0] * len(healed)
            threshold = self.detector.threshold if self.detector else 1.0
            still = []
            for i, reply, score in zip(pending, replies, scores):
                if reply and score < threshold:
                    ok = HealResult(
                        reply, attempt, float(score), False, self.generator_name, PROMPT_VERSION
                    )
                    if self.reject_refusals and refuses(reply):
                        ok.refusal = True
                        refused[i] = ok
                        still.append(i)
                    else:
                        results[i] = ok
                else:
                    still.append(i)
            pending = still
        for i in pending:
            if i in refused:  # safe but refusing: better than the fixed deflection
                results[i] = refused[i]
                continue
            results[i] = HealResult(
                self.fallback_reply,
                self.retries + 1,
                None,
                True,
                self.generator_name,
                PROMPT_VERSION,
            )
        return [r for r in results if r is not None]


def _tidy(text: str) -> str:
    """Drop a trailing unfinished sentence from a length-capped generation."""
    text = " ".join(text.split())
    for stop in ("User1:", "User2:", "<|"):
        text = text.split(stop)[0].strip()
    last = max(text.rfind("."), text.rfind("!"), text.rfind("?"))
    if last >= 20:
        text = text[: last + 1]
    return text
