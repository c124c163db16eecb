"""Paired differences pooled over seeds: every test context of every seed in one bootstrap.

Per seed, the comparison has a paired interval over that seed's 30-odd test contexts;
over seeds, the report's mean carries a Student-t interval whose factor is 4.3 at three
seeds, so it rarely says anything. The question a reviewer asks of a sweep, "is method A
less toxic than method B on this kind of data", is answered here by pooling: each
context of each seed is paired with the other method's replies to the same context on
the same seed (the same data, the same sampling seeds), and the pooled contexts are
resampled together (:func:`optimus_lib.evaluate.stats.rtr_diff_interval`). What it does
not resample is training: each seed contributes one adapter per method, so the interval
is about these runs' test contexts, not about a fourth seed; the report shows both.

Pairs: every method against no_defense, and the focus method (the promoted one, else
``optimus``) against every other method: the paper's claim is that Optimus beats
filtering and STAR-DSS, not only the undefended model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from optimus_lib.evaluate.stats import rtr_diff_interval

REFERENCE = "no_defense"


#: The evaluators' per-reply score fields in an evaluation, by the name the tables show.
EVALUATORS = {"lexical": "toxicity", "contextual": "toxicity_context"}


def _toxic_scores(
    path: str, score: str, cache: dict[tuple[str, str], dict[str, list[float]]]
) -> dict[str, list[float]]:
    """One evaluator's scores of each toxic-context reply of one evaluation, by context
    id (empty when that evaluator did not run)."""
    if (path, score) not in cache:
        by: dict[str, list[float]] = {}
        for g in json.loads(Path(path).read_text(encoding="utf-8"))["generations"]:
            if g["set"] == "toxic" and g.get(score) is not None:
                by.setdefault(str(g["id"]), []).append(float(g[score]))
        cache[(path, score)] = by
    return cache[(path, score)]


def _rate(groups: list[list[float]], threshold: float) -> float:
    hits = sum(s >= threshold for g in groups for s in g)
    return hits / sum(len(g) for g in groups)


def pooled_differences(
    rows: list[dict[str, Any]],
    focus: str | None = None,
    threshold: float = 0.5,
    reference: str = REFERENCE,
) -> list[dict[str, Any]]:
    """Pooled paired toxic-RTR differences per (attack, recall) cell of a sweep.

    ``rows``: the comparison's rows (each with ``evaluation``, the path of its evaluate
    results, and ``seed``/``recall_target``/``method``/``attack``). Returns one entry per
    pair and evaluator (``lexical``: the evaluation's ``toxicity``; ``contextual``: its
    ``toxicity_context``, where that evaluator ran) with ``method``, ``versus``,
    ``seeds`` (those both ran), ``contexts``, the pooled RTR of each, ``diff`` (method
    minus versus) and its 95 % interval ``lo``/``hi``.
    Only cells with at least two seeds are pooled: one seed is the rows' own interval.
    """
    cache: dict[tuple[str, str], dict[str, list[float]]] = {}
    cells: dict[tuple[Any, float], dict[str, dict[int, str]]] = {}
    for r in rows:
        if r.get("evaluation"):
            cell = cells.setdefault((r.get("attack"), float(r["recall_target"])), {})
            cell.setdefault(r["method"], {})[int(r["seed"])] = str(r["evaluation"])
    if focus is None:
        focus = "optimus"
    out = []
    for (attack, recall), by_method in cells.items():
        pairs = [(m, reference) for m in by_method if m != reference and reference in by_method]
        if focus in by_method:
            pairs += [(focus, m) for m in by_method if m not in (focus, reference)]
        for (a, b), (evaluator, score) in ((p, e) for p in pairs for e in EVALUATORS.items()):
            seeds = sorted(set(by_method[a]) & set(by_method[b]))
            if len(seeds) < 2:
                continue
            mine: list[list[float]] = []
            ref: list[list[float]] = []
            for s in seeds:
                x = _toxic_scores(by_method[a][s], score, cache)
                y = _toxic_scores(by_method[b][s], score, cache)
                for cid in sorted(set(x) & set(y)):
                    if x[cid] and y[cid]:
                        mine.append(x[cid])
                        ref.append(y[cid])
            if not mine:
                continue
            lo, hi = rtr_diff_interval(mine, ref, threshold)
            ra, rb = _rate(mine, threshold), _rate(ref, threshold)
            out.append(
                {
                    "attack": attack,
                    "recall_target": recall,
                    "method": a,
                    "versus": b,
                    "evaluator": evaluator,
                    "seeds": seeds,
                    "contexts": len(mine),
                    "rtr": ra,
                    "rtr_versus": rb,
                    "diff": ra - rb,
                    "lo": lo,
                    "hi": hi,
                }
            )
    out.sort(
        key=lambda e: (
            e["attack"] is not None,
            str(e["attack"]),
            list(EVALUATORS).index(e["evaluator"]),
            -e["recall_target"],
        )
    )
    return out


def pooled_table(entries: list[dict[str, Any]]) -> list[list[str]]:
    """The report's table of :func:`pooled_differences` (header first; [] when empty)."""
    if not entries:
        return []
    rows = [
        [
            "data",
            "evaluator",
            "recall target",
            "method",
            "versus",
            "seeds",
            "contexts",
            "RTR toxic",
            "RTR toxic (versus)",
            "difference [95 %, pooled paired]",
            "ratio",
        ]
    ]
    for e in entries:
        ratio = f"{e['rtr'] / e['rtr_versus']:.2f}x" if e["rtr_versus"] else ""
        rows.append(
            [
                e["attack"] or "clean",
                e.get("evaluator", "lexical"),
                f"{e['recall_target']:g}",
                e["method"],
                e["versus"],
                ", ".join(str(s) for s in e["seeds"]),
                str(e["contexts"]),
                f"{e['rtr']:.3f}",
                f"{e['rtr_versus']:.3f}",
                f"{e['diff']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}]",
                ratio,
            ]
        )
    return rows
