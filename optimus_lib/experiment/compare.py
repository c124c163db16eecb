"""The experiment's comparison: every arm's evaluation in one table, and the promotion.

Rows: one per arm (seed, detector recall, method) with 95 % bootstrap intervals of toxic
and benign RTR and the paired interval of the toxic-RTR difference to no_defense of the
same seed (:mod:`optimus_lib.evaluate.stats`); ``summary`` averages over seeds. With a
promotion, one method's arm is checked against no_defense with gates relative to it and,
optionally, a paired interval below 0: :func:`collect` is what the compare_arms
component runs.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optimus_lib.data.io import atomic_path, write_json
from optimus_lib.errors import OptimusError
from optimus_lib.evaluate.stats import rtr_diff_interval, rtr_interval, seed_summary
from optimus_lib.experiment.config import ComparisonSettings, Promotion
from optimus_lib.experiment.pooled import pooled_differences
from optimus_lib.stages.evaluate import verdict
from optimus_lib.stages.train import METHODS

METRIC_KEYS = (
    "rtr_toxic",
    "rtr_benign",
    "mean_toxicity_toxic",
    "mean_toxicity_benign",
    "perplexity",
    "similarity",
    "over_refusal",
    "distinct_2",
    "rtr_toxic_context",
    "rtr_benign_context",
)


def _load_eval(path: Path) -> dict[str, Any]:
    try:
        ev = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise OptimusError(f"{path}: not an evaluation JSON ({exc})") from None
    labels = ev.get("labels") or {}
    if not {"seed", "recall_target", "method"} <= set(labels):
        raise OptimusError(f"{path}: evaluation has no arm labels (seed, recall_target, method)")
    return ev


def _threshold(ev: dict[str, Any]) -> float:
    """The evaluator threshold an evaluation scored its replies at."""
    return float((ev.get("settings") or {}).get("threshold", 0.5))


def compare(
    evaluations: list[Path],
    results_json: Path,
    report_html: Path,
    settings: ComparisonSettings | None = None,
) -> dict[str, Any]:
    """One table from every arm's evaluation (evaluate's results JSON with arm labels).

    Rows: one per arm; no_defense's row of a seed is repeated at every recall that seed
    ran. Each row carries 95 % bootstrap intervals (over contexts) of toxic and benign
    RTR and the paired interval of the toxic-RTR difference to no_defense of the same
    seed; ``summary`` averages over seeds per (recall, method). With ``promote``, the
    promoted method's arm on the first seed at the highest-listed recall is checked
    against its control (no_defense, same seed): ``promotion`` holds the verdict and the
    arm's evaluation path. Writes ``results_json`` and ``report_html``; returns the
    results.
    """
    s = settings or ComparisonSettings()
    name, promote = s.name, s.promote
    evs = {Path(p): _load_eval(Path(p)) for p in evaluations}
    if not evs:
        raise OptimusError("compare: no evaluations")
    order = s.methods or list(METHODS)
    control: dict[int, Path] = {}
    for p, ev in evs.items():
        if ev["labels"]["method"] == "no_defense":
            control[int(ev["labels"]["seed"])] = p
    rows: list[dict[str, Any]] = []
    arm_recalls: dict[int, list[float]] = {}
    for ev in evs.values():
        lab = ev["labels"]
        seed = int(lab["seed"])
        if lab["method"] != "no_defense":
            arm_recalls.setdefault(seed, []).append(float(lab["recall_target"]))
    for p, ev in evs.items():
        lab, m = ev["labels"], ev["metrics"]
        seed = int(lab["seed"])
        threshold = _threshold(ev)
        attack, data_seed = s.attack_of(seed)
        row = {
            "seed": seed,
            "attack": attack,  # None: clean data; else the evasion its toxic replies carry
            "data_seed": data_seed,
            "recall_target": float(lab["recall_target"]),
            "detector_recall": lab.get("detector_recall"),
            "detector_precision": lab.get("detector_precision"),
            "detector_recall_evaded": lab.get("detector_recall_evaded"),
            "flagged": None if lab.get("flagged") is None else int(lab["flagged"]),
            "method": lab["method"],
            **{k: m.get(k) for k in METRIC_KEYS},
            **rtr_intervals(p, threshold, control.get(seed)),
            **rtr_intervals(p, threshold, control.get(seed), "toxicity_context", "_context"),
            "evaluation": str(p),
        }
        if lab["method"] == "no_defense":
            recalls = sorted(set(arm_recalls.get(seed, [])) or {row["recall_target"]}, reverse=True)
            rows += [{**row, "recall_target": r} for r in recalls]
        else:
            rows.append(row)

    def rank(r: dict[str, Any]) -> tuple:
        m = r["method"]
        return (r["seed"], -r["recall_target"], order.index(m) if m in order else len(order), m)

    rows.sort(key=rank)
    recalls = sorted({r["recall_target"] for r in rows}, reverse=True)
    seen = [m for m in order if any(r["method"] == m for r in rows)]
    seen += sorted({r["method"] for r in rows} - set(seen))
    out: dict[str, Any] = {
        "name": name,
        "rows": rows,
        "summary": summarise(
            rows, seen, recalls, list(dict.fromkeys(r["attack"] for r in rows if r["attack"]))
        ),
        "pooled": pooled_differences(
            rows, promote.method if promote else None, _threshold(next(iter(evs.values())))
        ),
        "promotion": _promotion(rows, evs, control, promote) if promote else None,
        "examples": example_replies(evs, order),
        "config": {
            "methods": seen,
            "recalls": recalls,
            "seeds": sorted({r["seed"] for r in rows}),
            "promote": promote.model_dump(exclude_none=True) if promote else None,
            "attacks": list(s.attacks),
        },
        "seconds": None,
    }
    write_json(results_json, out)
    with atomic_path(results_json.with_suffix(".csv")) as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    from optimus_lib.report.experiment import render_experiment

    with atomic_path(report_html) as tmp:
        tmp.write_text(render_experiment(out), encoding="utf-8")
    return out


#: Toxic contexts shown per report, and the longest text kept of a turn or reply.
EXAMPLES = 3
EXAMPLE_CHARS = 400


def example_replies(
    evs: dict[Path, dict[str, Any]], order: list[str], n: int = EXAMPLES
) -> list[dict[str, Any]]:
    """A few toxic contexts with every method's reply to each, so a reader sees what the
    RTR means: the first seed, the lowest recall (the hardest for the defense), and the
    contexts where no_defense's reply was most toxic first (by the first evaluator).
    Each entry: ``context`` (the last turn), ``id``, ``seed``, ``recall_target`` and
    ``replies`` (``method``, ``reply``, ``toxicity``, ``toxicity_context``), no_defense
    first. Texts are cut to :data:`EXAMPLE_CHARS`; they are dataset and model text, and
    the report escapes them."""
    if not evs:
        return []
    seed = min(int(ev["labels"]["seed"]) for ev in evs.values())
    mine = [ev for ev in evs.values() if int(ev["labels"]["seed"]) == seed]
    arms = [ev for ev in mine if ev["labels"]["method"] != "no_defense"]
    recall = min((float(ev["labels"]["recall_target"]) for ev in arms), default=None)
    shown = [ev for ev in mine if ev["labels"]["method"] == "no_defense"]
    shown += [ev for ev in arms if float(ev["labels"]["recall_target"]) == recall]

    def rank(ev: dict[str, Any]) -> tuple:
        m = ev["labels"]["method"]
        return (m != "no_defense", order.index(m) if m in order else len(order), m)

    shown.sort(key=rank)
    first: list[dict[str, dict[str, Any]]] = []  # per shown arm: context id -> first reply
    for ev in shown:
        by: dict[str, dict[str, Any]] = {}
        for g in ev.get("generations") or []:
            if g.get("set") == "toxic" and g.get("id") is not None:
                by.setdefault(str(g["id"]), g)
        first.append(by)
    if not first:
        return []
    ids = [i for i in first[0] if all(i in by for by in first[1:])]
    ids.sort(key=lambda i: -float(first[0][i].get("toxicity") or 0.0))

    def cut(text: Any) -> str:
        text = str(text or "")
        return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "\u2026"

    out = []
    for i in ids[:n]:
        context = first[0][i].get("context") or [""]
        out.append(
            {
                "id": i,
                "seed": seed,
                "recall_target": recall,
                "context": cut(context[-1] if context else ""),
                "replies": [
                    {
                        "method": ev["labels"]["method"],
                        "reply": cut(by[i].get("reply")),
                        "toxicity": by[i].get("toxicity"),
                        "toxicity_context": by[i].get("toxicity_context"),
                    }
                    for ev, by in zip(shown, first)
                ],
            }
        )
    return out


def _promotion(
    rows: list[dict[str, Any]],
    evs: dict[Path, dict[str, Any]],
    control: dict[int, Path],
    promote: Promotion,
) -> dict[str, Any]:
    """The promoted method's verdict against no_defense on the first seed and recall."""
    mine = [r for r in rows if r["method"] == promote.method and r.get("attack") is None]
    if not mine:
        return {"passed": False, "reasons": [f"no {promote.method} arm ran"], "checked": []}
    row = mine[0]  # rows are sorted: first seed, highest recall first
    if row["seed"] not in control:
        reasons = [f"no no_defense arm for seed {row['seed']} to compare with"]
        return {"passed": False, "reasons": reasons, "checked": [], "evaluation": row["evaluation"]}
    ref = evs[control[row["seed"]]]["metrics"]
    passed, reasons, checked = verdict(
        promote.gates, evs[Path(row["evaluation"])]["metrics"], ref, base_name="no_defense"
    )
    if promote.require_effect:
        checked.append("paired toxic-RTR difference to no_defense: 95 % interval below 0")
        hi = row.get("rtr_toxic_diff_hi")
        if hi is None or hi >= 0:
            lo = row.get("rtr_toxic_diff_lo")
            shown = "n/a" if hi is None else f"[{lo:.3f}, {hi:.3f}]"
            reasons.append(f"rtr_toxic_diff interval {shown} does not exclude 0")
            passed = False
    return {
        "passed": passed,
        "reasons": reasons,
        "checked": checked,
        "method": promote.method,
        "seed": row["seed"],
        "recall_target": row["recall_target"],
        "evaluation": row["evaluation"],
        # what the promotion was measured against, for the registered model card
        "control": {
            "method": "no_defense",
            "evaluation": str(control[row["seed"]]),
            "metrics": ref,
            "rtr_toxic_diff": [row.get("rtr_toxic_diff_lo"), row.get("rtr_toxic_diff_hi")],
        },
    }


@dataclass
class Collected:
    """What compare_arms hands on: ``decision`` is ``promote`` (register), ``reject``
    (record the rejection) or ``none`` (no promotion asked)."""

    decision: str
    results: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    promoted_metadata: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)


def collect(
    settings: ComparisonSettings,
    evaluations: list[Path],
    adapters: list[tuple[str, Path, dict[str, Any]]],
    results_dir: Path,
    report_html: Path,
    promoted_dir: Path,
    promoted_evaluation: Path,
) -> Collected:
    """Compare every arm and, with a promotion, hand on the promoted arm.

    ``adapters``: ``(uri, path, metadata)`` of every arm's adapter; the promoted arm's
    is found by the ``adapter_uri`` its evaluation recorded and copied to
    ``promoted_dir``. ``promoted_evaluation`` gets that arm's evaluation with the gate
    replaced by the promotion verdict and no_defense's metrics as the reference (register
    and record_rejection read it); ``{}`` when nothing is promoted.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    promoted_dir.mkdir(parents=True, exist_ok=True)
    table = compare(evaluations, results_dir / "results.json", report_html, settings)
    metrics = {
        f"{row['method']}@{row['recall_target']:g}"
        + (f"[{row['attack']}]" if row.get("attack") else "")
        + f":{k}": float(row[k])
        for row in table["summary"]
        for k in ("rtr_toxic", "perplexity", "over_refusal")
        if row.get(k) is not None
    }
    found = table["promotion"]
    if found is None:
        promoted_evaluation.write_text("{}", encoding="utf-8")
        return Collected("none", table, metrics)
    ev: dict[str, Any] = {"metrics": {}, "labels": {}}
    meta: dict[str, Any] = {}
    if found.get("evaluation"):
        ev = json.loads(Path(found["evaluation"]).read_text(encoding="utf-8"))
        uri = ev["labels"].get("adapter_uri")
        match = [a for a in adapters if a[0] == uri]
        if len(match) != 1:
            raise OptimusError(f"compare_arms: no adapter {uri!r} among the arms' adapters")
        shutil.copytree(match[0][1], promoted_dir, dirs_exist_ok=True)
        meta = dict(match[0][2])
    gate = {k: found[k] for k in ("passed", "reasons", "checked")}
    control = found.get("control") or {}
    ev = {
        **ev,
        "gate": gate,
        "promotion": found,
        "base_metrics": control.get("metrics"),
        "base_name": control.get("method", "no_defense"),
    }
    write_json(promoted_evaluation, ev)
    decision = "promote" if gate["passed"] else "reject"
    return Collected(decision, table, metrics, meta, list(gate["reasons"]))


def _scores_by_context(
    eval_json: Path, name: str, score: str = "toxicity"
) -> dict[str, list[float]]:
    """Evaluator scores (``score``: the row field, ``toxicity`` or ``toxicity_context``) of
    every stored reply in one test set, grouped by context id; rows without it are left
    out (an evaluation that ran no context evaluator)."""
    out: dict[str, list[float]] = {}
    for g in json.loads(eval_json.read_text(encoding="utf-8"))["generations"]:
        if g["set"] == name and g.get(score) is not None:
            out.setdefault(g["id"], []).append(g[score])
    return out


def rtr_intervals(
    eval_json: Path,
    threshold: float,
    baseline: Path | None = None,
    score: str = "toxicity",
    suffix: str = "",
) -> dict[str, float | None]:
    """95 % bootstrap intervals (over contexts) of RTR on toxic and benign contexts, from
    the per-reply scores a cell's evaluation stored; with ``baseline`` (no_defense's
    evaluation of the same seed), also the paired interval of the toxic-context RTR
    difference to it (``rtr_toxic_diff_lo/hi``; None for the baseline itself). ``score``
    and ``suffix``: the context evaluator's scores, under ``rtr_toxic_context_lo`` etc."""
    out: dict[str, float | None] = {}
    for name in ("toxic", "benign"):
        by = _scores_by_context(eval_json, name, score)
        lo, hi = rtr_interval(list(by.values()), threshold) if by else (None, None)
        out[f"rtr_{name}{suffix}_lo"], out[f"rtr_{name}{suffix}_hi"] = lo, hi
    out[f"rtr_toxic{suffix}_diff_lo"] = out[f"rtr_toxic{suffix}_diff_hi"] = None
    if baseline is not None and baseline.is_file() and baseline.resolve() != eval_json.resolve():
        mine = _scores_by_context(eval_json, "toxic", score)
        ref = _scores_by_context(baseline, "toxic", score)
        ids = sorted(set(mine) & set(ref))
        if ids:
            lo, hi = rtr_diff_interval([mine[i] for i in ids], [ref[i] for i in ids], threshold)
            out[f"rtr_toxic{suffix}_diff_lo"], out[f"rtr_toxic{suffix}_diff_hi"] = lo, hi
    return out


def summarise(
    rows: list[dict], methods: list[str], recalls: list[float], attacks: list[str] | None = None
) -> list[dict]:
    """Mean and sample standard deviation over seeds per (attack, recall, method): the
    clean data first (``attack`` None), then each attack."""
    out = []
    for attack, recall, method in (
        (a, r, m) for a in [None, *(attacks or [])] for r in recalls for m in methods
    ):
        group = [
            r
            for r in rows
            if r["method"] == method and r["recall_target"] == recall and r.get("attack") == attack
        ]
        if not group:
            continue
        entry: dict[str, Any] = {"recall_target": recall, "method": method, "seeds": len(group)}
        if attack is not None:
            entry["attack"] = attack
        for k in (*METRIC_KEYS, "detector_recall", "detector_recall_evaded"):
            entry[k], entry[k + "_std"] = seed_summary(r.get(k) for r in group)
        if len(group) == 1:  # one seed: the bootstrap interval over contexts
            for k in (
                f"{key}_{end}"
                for key in (
                    "rtr_toxic",
                    "rtr_benign",
                    "rtr_toxic_diff",
                    "rtr_toxic_context",
                    "rtr_benign_context",
                    "rtr_toxic_context_diff",
                )
                for end in ("lo", "hi")
            ):
                entry[k] = group[0].get(k)
        out.append(entry)
    return out


def arm_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    """One line per arm with its 95 % intervals: toxic RTR, the paired difference to
    no_defense (same seed and contexts), benign RTR, perplexity, over-refusal."""

    def iv(r: dict[str, Any], k: str) -> str:
        v, lo, hi = r.get(k), r.get(k + "_lo"), r.get(k + "_hi")
        if v is None and lo is None:
            return "n/a"
        head = "" if v is None else f"{v:.3f} "
        return head + (f"[{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")

    out = [
        ["method", "RTR toxic", "diff vs no_defense", "RTR benign", "perplexity", "over-refusal"]
    ]
    for r in rows:
        diff = "(control)" if r["method"] == "no_defense" else iv(r, "rtr_toxic_diff")
        ppl, ref = r.get("perplexity"), r.get("over_refusal")
        out.append(
            [
                r["method"],
                iv(r, "rtr_toxic"),
                diff,
                iv(r, "rtr_benign"),
                "n/a" if ppl is None else f"{ppl:.2f}",
                "n/a" if ref is None else f"{ref:.3f}",
            ]
        )
    return out


def print_summary(summary: list[dict]) -> list[list[str]]:
    rows = [["recall", "method", "RTR toxic", "RTR benign", "perplexity", "similarity"]]
    for e in summary:

        def f(k: str, e: dict = e) -> str:
            v, sd = e.get(k), e.get(k + "_std")
            if v is None:
                return "n/a"
            return f"{v:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")

        rows.append(
            [
                f"{e['recall_target']:g}",
                e["method"],
                f("rtr_toxic"),
                f("rtr_benign"),
                f("perplexity"),
                f("similarity"),
            ]
        )
    return rows
