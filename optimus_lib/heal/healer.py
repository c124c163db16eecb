"""Healers: contextual (an aligned model writes a prosocial reply) and fixed-reply.

Contextual healing keeps the dialog's context and asks an aligned model for a kind,
non-judgemental reply to the last turn (nucleus sampling, as in the paper). Each healed
reply is re-scored by the scan detector; a flagged or empty reply is retried with a new
sample, and after ``retries`` failures the fixed neutral reply is used, so a hostile
context can never push a toxic "healed" reply into training.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from optimus_lib.data.schema import Sample
from optimus_lib.detect.base import Detector

if TYPE_CHECKING:  # torch is imported only by the code that runs a model
    from optimus_lib.models.engine import TransformersEngine

PROMPT_VERSION = "heal-v1"

SYSTEM = (
    "You are a kind, respectful conversation partner. Reply to the other person's last "
    "message in one or two short sentences. Be warm, empathetic and non-judgemental. "
    "Never insult, swear, threaten, agree with hateful or harmful statements, or give "
    "dangerous advice. If the conversation turns hostile, calmly steer it somewhere "
    "positive."
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

    def _prompt(self, sample: Sample) -> list[int]:
        msgs = [{"role": "system", "content": SYSTEM}, *sample.prompt_messages()]
        return self.engine.chat_ids(msgs)

    def heal(self, samples: list[Sample]) -> list[HealResult]:
        results: list[HealResult | None] = [None] * len(samples)
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
                seed=self.seed + attempt,
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
                    results[i] = HealResult(
                        reply, attempt, float(score), False, self.generator_name, PROMPT_VERSION
                    )
                else:
                    still.append(i)
            pending = still
        for i in pending:
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
