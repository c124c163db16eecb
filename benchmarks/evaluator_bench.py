"""The two RTR evaluators on labelled dialogs they were not fitted on.

``lexical`` (the reply alone) and ``contextual`` (the reply in its context; fitted on
``optimus_lib/detect/data/test.jsonl`` only) are scored on the dev set
(``detect/data/dev.jsonl``, which ``contextual`` never saw) and on the older hand-written
``resources/devset.jsonl``: AUC, recall and FPR at 0.5, and the flagged share per
category (recall for toxic categories, FPR for safe ones).

Usage::

    flock -s /tmp/optimus-heavy.lock .venv/bin/python benchmarks/evaluator_bench.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from optimus_lib.data.io import read_samples  # noqa: E402
from optimus_lib.detect import build_detector  # noqa: E402
from optimus_lib.detect.metrics import classification_metrics  # noqa: E402

SETS = ("optimus_lib/detect/data/dev.jsonl", "optimus_lib/resources/devset.jsonl")


def main() -> None:
    print("| data | evaluator | AUC | recall | FPR | flagged share per category |")
    print("|---|---|---|---|---|---|")
    for path in SETS:
        samples = read_samples(ROOT / path)
        labels = [s.label for s in samples]
        for name in ("lexical", "contextual"):
            scores = build_detector(name).score(samples)
            q = classification_metrics(labels, scores, 0.5)
            assert q is not None
            cats: dict[str, list[bool]] = {}
            for s, v in zip(samples, scores):
                cats.setdefault(s.category or "", []).append(v >= 0.5)
            share = ", ".join(f"{c} {sum(v) / len(v):.2f}" for c, v in sorted(cats.items()))
            print(
                f"| {Path(path).name} | {name} | {q['auc']:.3f} | {q['recall']:.3f} "
                f"| {q['fpr']:.3f} | {share} |"
            )


if __name__ == "__main__":
    main()
