"""Quality of the default detector (``stack``) on the held-out test set, against the others.

What it measures, all with scikit-learn metrics (``optimus_lib.detect.metrics``) at the
threshold every stage uses by default (0.5):

* on ``optimus_lib/detect/data/test.jsonl`` (held out: never used for fitting or for the
  threshold): AUC, precision, recall and FPR of ``stack``, ``lexical``, ``wordlist``,
  ``max(wordlist,lexical)`` and the MiniLM text head alone (reply only, no context), and
  the flagged share per category (recall for toxic categories, FPR for safe ones);
  the AUC of each of the stack's six input features;
* the bundled LLM judge (``llm-judge`` on SmolLM2-135M, the default before issue 14) on a
  stratified ``--judge-n`` subset of the test set (it runs at a few dialogs per second on
  CPU), with ``stack`` on the same subset; ``--judge-n 0`` skips it;
* out of distribution: the older hand-written ``resources/devset.jsonl`` (64 dialogs,
  categories partly outside what ``stack`` was built for: risky advice, biased opinions)
  and a poisoned chit-chat set (``build_training_set(300, 0.3, seed=0)``, what the
  pipeline scans by default; its toxic replies were selected by the profanity SVM, so
  ``lexical`` is perfect there by construction);
* speed: ``stack`` load time and dialogs per second on the test set.

Usage::

    flock /tmp/heavy.lock .venv/bin/python benchmarks/detector_bench.py \
        --out runs/detector_bench.json

Prints markdown tables; writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from optimus_lib.data.io import read_samples  # noqa: E402
from optimus_lib.data.schema import Sample  # noqa: E402
from optimus_lib.detect import build_detector  # noqa: E402
from optimus_lib.detect.base import DetectorOptions  # noqa: E402
from optimus_lib.detect.calibrate import devset_path  # noqa: E402
from optimus_lib.detect.metrics import auc, classification_metrics, fmt  # noqa: E402
from optimus_lib.detect.stack import FEATURES, features, load_params, signals  # noqa: E402

DATA = ROOT / "optimus_lib" / "detect" / "data"
THRESHOLD = 0.5
BASELINES = ("lexical", "wordlist", "max(wordlist,lexical)")


def quality(samples: list[Sample], scores: list[float]) -> dict:
    q = classification_metrics([s.label for s in samples], scores, THRESHOLD)
    assert q is not None
    return q


def per_category(samples: list[Sample], scores: list[float]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for cat in sorted({s.category or "" for s in samples}):
        idx = [i for i, s in enumerate(samples) if (s.category or "") == cat]
        flagged = sum(scores[i] >= THRESHOLD for i in idx)
        out[cat] = {
            "n": len(idx),
            "label": "toxic" if samples[idx[0]].label == 1 else "safe",
            "flagged_share": flagged / len(idx),
            "mean_score": float(np.mean([scores[i] for i in idx])),
        }
    return out


def stratified(samples: list[Sample], n: int, seed: int) -> list[int]:
    """``n`` indices spread over categories in proportion (at least one each)."""
    rng = random.Random(seed)
    cats: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        cats.setdefault(s.category or "", []).append(i)
    picked: list[int] = []
    for _cat, idx in sorted(cats.items()):
        k = max(1, round(n * len(idx) / len(samples)))
        picked += rng.sample(idx, min(k, len(idx)))
    rng.shuffle(picked)
    return sorted(picked[:n])


def score_all(samples: list[Sample], names: tuple[str, ...]) -> dict[str, list[float]]:
    return {n: build_detector(n).score(samples) for n in names}


def table(rows: dict[str, dict]) -> str:
    lines = [
        "| detector | AUC | precision | recall | FPR | flagged |",
        "|---|---|---|---|---|---|",
    ]
    for name, q in rows.items():
        lines.append(
            f"| {name} | {fmt(q['auc'])} | {fmt(q['precision'])} | {fmt(q['recall'])} | "
            f"{fmt(q['fpr'])} | {q['flagged']}/{q['n']} |"
        )
    return "\n".join(lines)


def category_table(cats: dict[str, dict[str, dict]]) -> str:
    names = list(cats)
    first = cats[names[0]]
    lines = [
        "| category (n) | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for cat, v in first.items():
        cells = [f"{cats[n][cat]['flagged_share']:.2f}" for n in names]
        lines.append(f"| {cat} ({v['label']}, {v['n']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--judge-n", type=int, default=50, help="test dialogs for the LLM judge")
    ap.add_argument("--poison-n", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("runs/detector_bench.json"))
    a = ap.parse_args()

    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    res: dict = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_avg_start": os.getloadavg(),
        },
        "threshold": THRESHOLD,
    }
    test = read_samples(DATA / "test.jsonl")
    print(f"test set: {len(test)} dialogs, {sum(s.label for s in test)} toxic")

    t0 = time.perf_counter()
    stack = build_detector("stack")
    stack.score(test[:2])  # loads MiniLM, the SVM and the word list
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = {"stack": stack.score(test)}
    stack_s = time.perf_counter() - t0
    res["speed"] = {"load_s": load_s, "score_s": stack_s, "dialogs_per_s": len(test) / stack_s}
    scores.update(score_all(test, BASELINES))
    params = load_params()
    sig = signals(test)
    x = features(sig, params.text_head, params.agree_head)
    scores["minilm text head (reply only)"] = x[:, 2].tolist()
    ys = [s.label for s in test]
    res["test"] = {n: quality(test, s) for n, s in scores.items()}
    res["test_by_category"] = {n: per_category(test, s) for n, s in scores.items()}
    res["test_feature_auc"] = {f: auc(ys, x[:, j].tolist()) for j, f in enumerate(FEATURES)}

    print("\n## Held-out test set, threshold 0.5\n")
    print(table(res["test"]))
    print("\nFlagged share per category (recall for toxic, FPR for safe):\n")
    print(category_table(res["test_by_category"]))
    print("\nAUC of each stack input on the test set: ")
    print(", ".join(f"{f} {v:.3f}" for f, v in res["test_feature_auc"].items()))
    sp = res["speed"]
    print(
        f"\nstack: load {sp['load_s']:.1f} s, {sp['dialogs_per_s']:.1f} dialogs/s "
        f"({len(test)} in {sp['score_s']:.1f} s)"
    )

    if a.judge_n > 0:
        idx = stratified(test, a.judge_n, seed=0)
        sub = [test[i] for i in idx]
        judge = build_detector("llm-judge", DetectorOptions())
        t0 = time.perf_counter()
        js = judge.score(sub)
        judge_s = time.perf_counter() - t0
        res["judge_subset"] = {
            "n": len(sub),
            "seconds": judge_s,
            "llm-judge (bundled SmolLM2-135M)": quality(sub, js),
            "stack": quality(sub, [scores["stack"][i] for i in idx]),
        }
        print(f"\n## Stratified test subset ({len(sub)}), llm-judge vs stack, threshold 0.5\n")
        print(table({k: v for k, v in res["judge_subset"].items() if isinstance(v, dict)}))
        print(f"\nllm-judge: {judge_s:.0f} s for {len(sub)} dialogs")

    dev = read_samples(devset_path())
    ood = score_all(dev, ("stack", *BASELINES))
    res["devset64"] = {n: quality(dev, s) for n, s in ood.items()}
    res["devset64_by_category"] = {n: per_category(dev, s) for n, s in ood.items()}
    print("\n## Out of distribution: resources/devset.jsonl (64), threshold 0.5\n")
    print(table(res["devset64"]))
    print()
    print(category_table(res["devset64_by_category"]))

    from optimus_lib.threats.poison import build_training_set

    poisoned = build_training_set(a.poison_n, 0.3, seed=0)
    ps = score_all(poisoned, ("stack", *BASELINES))
    res["poisoned"] = {n: quality(poisoned, s) for n, s in ps.items()}
    print(f"\n## Poisoned chit-chat ({len(poisoned)}, 30 % toxic), threshold 0.5\n")
    print(table(res["poisoned"]))

    res["machine"]["load_avg_end"] = os.getloadavg()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    print(f"\n-> {a.out}")


if __name__ == "__main__":
    main()
