"""The comparison page for a sweep of methods x detector recall x seeds.

Input is the list of result rows that ``optimus experiment`` writes to ``results.json``
(``rows``) or ``results.csv``: one row per (seed, recall_target, method) with the
metrics, the 95 % bootstrap interval of each RTR over test contexts (``rtr_toxic_lo/hi``,
``rtr_benign_lo/hi``) and the paired bootstrap interval of the toxic-context RTR
difference to ``no_defense`` on the same seed's contexts (``rtr_toxic_diff_lo/hi``).
Nothing else is needed, so a pipeline step that only collects those rows can render the
same page (:func:`render_comparison`).

How a cell is summarised (the same rule for the tables and the plot's error bars):

* one seed: the row's value with its bootstrap interval over test contexts (metrics
  without an interval are shown bare);
* several seeds: the mean over seeds with a 95 % Student-t interval of that mean. Each
  seed draws its own data, trains its own adapter and samples its own replies, so the
  seed-to-seed spread already carries test-set noise as well as training noise; with 2
  seeds the t factor is 12.7 and the interval is honestly wide.

The paired difference per seed is RTR(method) - RTR(no_defense) on that seed with the
paired interval from the row; pooled over seeds it is summarised by the same rule.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from optimus_lib.errors import OptimusError
from optimus_lib.evaluate.stats import Estimate, estimate, finite
from optimus_lib.experiment.pooled import pooled_table
from optimus_lib.report.templating import fmt, png_base64, render

REFERENCE = "no_defense"

# key, header, the range the metric lives in (intervals over seeds are clipped to it)
METRICS: tuple[tuple[str, str, tuple[float, float]], ...] = (
    ("rtr_toxic", "RTR toxic", (0.0, 1.0)),
    ("rtr_benign", "RTR benign", (0.0, 1.0)),
    ("rtr_toxic_context", "RTR toxic (contextual)", (0.0, 1.0)),
    ("rtr_benign_context", "RTR benign (contextual)", (0.0, 1.0)),
    ("mean_toxicity_toxic", "mean toxicity (toxic ctx)", (0.0, 1.0)),
    ("perplexity", "perplexity", (0.0, math.inf)),
    ("similarity", "similarity", (-1.0, 1.0)),
    ("over_refusal", "over-refusal", (0.0, 1.0)),
    ("distinct_2", "distinct-2", (0.0, 1.0)),
    ("detector_recall", "detector recall", (0.0, 1.0)),
    ("detector_recall_evaded", "detector recall, evaded replies", (0.0, 1.0)),
)
DIFF = "rtr_toxic_diff"
DIFF_CONTEXT = "rtr_toxic_context_diff"


def _num(v: Any) -> Any:
    """A row value as read from JSON or CSV: numbers (and numeric text) as finite floats,
    empty text / NaN / inf as None, other text unchanged."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return finite(v)
    if isinstance(v, str):
        if not v.strip():
            return None
        try:
            return finite(float(v))
        except ValueError:
            return v
    return v


def _normalise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict):
            raise OptimusError(f"result row {i} is a {type(r).__name__}, not a mapping")
        missing = [k for k in ("seed", "recall_target", "method") if r.get(k) in (None, "")]
        if missing:
            raise OptimusError(
                f"result row {i} lacks {', '.join(missing)} (expected the rows of "
                "results.json or results.csv)"
            )
        row = {k: _num(v) for k, v in r.items()}
        row["method"] = str(r["method"])
        for k in ("seed", "recall_target"):
            if not isinstance(row[k], float):
                raise OptimusError(f"result row {i}: {k} is not a number: {r[k]!r}")
        row["seed"] = int(row["seed"])
        out.append(row)
    return out


@dataclass
class Comparison:
    """Every cell of a sweep, summarised; recalls ascending, methods in row order."""

    methods: list[str]
    recalls: list[float]
    seeds: list[int]
    reference: str
    cells: dict[tuple[float, str], dict[str, Estimate]] = field(default_factory=dict)
    seed_diffs: dict[tuple[float, int, str], Estimate] = field(default_factory=dict)
    seed_values: dict[tuple[float, str, str], list[float]] = field(default_factory=dict)
    detector: dict[float, Estimate] = field(default_factory=dict)
    counts: dict[tuple[float, str], int] = field(default_factory=dict)

    @property
    def has_reference(self) -> bool:
        return self.reference in self.methods

    @property
    def compared(self) -> list[str]:
        """The methods with a paired difference to the reference."""
        return [m for m in self.methods if m != self.reference]


def compare(rows: list[dict[str, Any]], reference: str = REFERENCE) -> Comparison:
    """Summarise result rows per (recall, method), and the paired differences."""
    rows = _normalise(rows)
    cmp = Comparison(
        methods=list(dict.fromkeys(r["method"] for r in rows)),
        recalls=sorted({r["recall_target"] for r in rows}),
        seeds=sorted({r["seed"] for r in rows}),
        reference=reference,
    )
    by = {(r["recall_target"], r["seed"], r["method"]): r for r in rows}
    # The reference ignores the detector: if a collector kept it at one recall only, the
    # same seed's row from any recall is the same model.
    ref_any = {r["seed"]: r for r in rows if r["method"] == reference}
    for recall in cmp.recalls:
        det = {}
        for method in cmp.methods:
            group = [by[(recall, s, method)] for s in cmp.seeds if (recall, s, method) in by]
            if not group:
                continue
            cell = {
                key: estimate(
                    [(r.get(key), r.get(key + "_lo"), r.get(key + "_hi")) for r in group], b
                )
                for key, _, b in METRICS
            }
            for key, _, _ in METRICS:
                cmp.seed_values[(recall, method, key)] = [
                    r[key] for r in group if r.get(key) is not None
                ]
            if method != reference:
                for key, diff in (("rtr_toxic", DIFF), ("rtr_toxic_context", DIFF_CONTEXT)):
                    diffs = []
                    for r in group:
                        ref = by.get((recall, r["seed"], reference), ref_any.get(r["seed"]))
                        mine, theirs = r.get(key), ref and ref.get(key)
                        d = mine - theirs if mine is not None and theirs is not None else None
                        point = (d, r.get(diff + "_lo"), r.get(diff + "_hi"))
                        if diff == DIFF:
                            cmp.seed_diffs[(recall, r["seed"], method)] = estimate([point])
                        diffs.append(point)
                    cell[diff] = estimate(diffs, (-1.0, 1.0))
                for r in group:
                    if r.get("detector_recall") is not None:
                        det.setdefault(r["seed"], r["detector_recall"])
            cmp.cells[(recall, method)] = cell
            cmp.counts[(recall, method)] = len(group)
        # measured recall of the weakened detector: the same for every method of a seed
        cmp.detector[recall] = Estimate(statistics.fmean(det.values()) if det else None)
    return cmp


# ---- plot -------------------------------------------------------------------------------------
def _figure(cmp: Comparison):
    """RTR per method with the cells' intervals: a point chart over methods for a single
    recall, lines over an increasing recall axis for several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110, sharey=True)
    tops = [0.05]
    one = len(cmp.recalls) == 1
    for ax, key, title in (
        (axes[0], "rtr_toxic", "toxic contexts"),
        (axes[1], "rtr_benign", "benign contexts"),
    ):
        if one:
            recall = cmp.recalls[0]
            for i, m in enumerate(cmp.methods):
                e = cmp.cells.get((recall, m), {}).get(key)
                if e is None or e.value is None:
                    continue
                below, above = e.yerr()
                yerr = [[below], [above]]
                ax.errorbar([i], [e.value], yerr=yerr, fmt="o", capsize=4, color=f"C{i}")
                seeds = cmp.seed_values.get((recall, m, key), [])
                if len(seeds) > 1:  # the individual seeds, beside the point
                    ax.scatter([i + 0.15] * len(seeds), seeds, s=10, color="0.45", zorder=3)
                tops.append(e.value + above)
            ax.set_xticks(range(len(cmp.methods)), cmp.methods, rotation=20, ha="right")
            ax.set_xlim(-0.5, len(cmp.methods) - 0.5)
            ax.set_xlabel(f"method (detector recall target {recall:g})")
        else:
            lo, hi = cmp.recalls[0], cmp.recalls[-1]
            span = hi - lo
            for i, m in enumerate(cmp.methods):
                pts = [
                    (r, cmp.cells[(r, m)][key])
                    for r in cmp.recalls
                    if (r, m) in cmp.cells and cmp.cells[(r, m)][key].value is not None
                ]
                if not pts:
                    continue
                # a small sideways offset per method, so that error bars do not overlap
                dodge = 0.012 * span * (i - (len(cmp.methods) - 1) / 2)
                errs = [e.yerr() for _, e in pts]
                ax.errorbar(
                    [r + dodge for r, _ in pts],
                    [e.value for _, e in pts],
                    yerr=[[b for b, _ in errs], [a for _, a in errs]],
                    marker="o",
                    capsize=3,
                    label=m,
                    color=f"C{i}",
                )
                tops += [e.value + a for (_, e), (_, a) in zip(pts, errs)]
            ax.set_xticks(cmp.recalls, [f"{r:g}" for r in cmp.recalls])
            ax.set_xlim(lo - 0.06 * span, hi + 0.06 * span)
            ax.set_xlabel("detector recall (target)")
        ax.set_title(f"RTR on {title}")
    axes[0].set_ylim(0.0, min(1.05, max(tops) * 1.1))
    axes[0].set_ylabel("response toxicity rate (lower is better)")
    if not one:
        axes[1].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def comparison_figure(rows: list[dict[str, Any]], reference: str = REFERENCE):
    """The report's matplotlib figure for these rows (the caller closes it)."""
    return _figure(compare(rows, reference))


# ---- page -------------------------------------------------------------------------------------
def _side_by_side(cmp: Comparison, key: str, methods: list[str], signed: bool = False):
    """Rows: one per recall (as the sweep lists them, highest first), a column per method."""
    header = ["recall target", "detector recall"] + methods
    body = []
    for recall in reversed(cmp.recalls):
        cells = [cmp.cells.get((recall, m), {}).get(key) for m in methods]
        body.append(
            [f"{recall:g}", cmp.detector[recall].text()]
            + [e.text(signed) if e is not None else "" for e in cells]
        )
    return [header, *body]


def _per_seed_diffs(cmp: Comparison) -> list[list[str]]:
    rows = [["recall target", "seed"] + cmp.compared]
    for recall in reversed(cmp.recalls):
        for seed in cmp.seeds:
            cells = [cmp.seed_diffs.get((recall, seed, m)) for m in cmp.compared]
            if any(cells):
                rows.append(
                    [f"{recall:g}", str(seed)]
                    + [e.text(signed=True) if e is not None else "" for e in cells]
                )
    return rows


def _all_metrics(cmp: Comparison) -> list[list[str]]:
    keys = [
        (k, h) for k, h, _ in METRICS if any(c[k].value is not None for c in cmp.cells.values())
    ]
    header = ["recall target", "method", "seeds"] + [h for _, h in keys]
    if cmp.has_reference:
        header.append(f"RTR toxic − {cmp.reference} [95 %, paired]")
    rows = [header]
    for recall in reversed(cmp.recalls):
        for m in cmp.methods:
            cell = cmp.cells.get((recall, m))
            if cell is None:
                continue
            row = [f"{recall:g}", m, str(cmp.counts[(recall, m)])] + [
                cell[k].text() for k, _ in keys
            ]
            if cmp.has_reference:
                row.append("reference" if m == cmp.reference else cell[DIFF].text(signed=True))
            rows.append(row)
    return rows


def _attack_sections(rows: list[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """One section per attack: RTR on toxic contexts, the paired difference to the
    reference on the same attacked data, and the detector's recall on the evaded replies
    beside its recall on all toxic ones (seeds shown as the data seed they attack)."""
    names = list(dict.fromkeys(str(r["attack"]) for r in rows if r.get("attack")))
    out = []
    for name in names:
        sub = [
            {**r, "seed": r.get("data_seed", r["seed"])} for r in rows if r.get("attack") == name
        ]
        cmp = compare(sub, reference)
        det = [["recall target", "detector recall (all toxic)", "recall on evaded replies"]]
        for recall in reversed(cmp.recalls):
            cell = next(
                (cmp.cells[(recall, m)] for m in cmp.compared if (recall, m) in cmp.cells), None
            )
            if cell is not None:
                det.append(
                    [
                        f"{recall:g}",
                        cell["detector_recall"].text(),
                        cell["detector_recall_evaded"].text(),
                    ]
                )
        out.append(
            {
                "name": name,
                "rtr_toxic": _side_by_side(cmp, "rtr_toxic", cmp.methods),
                "paired": _side_by_side(cmp, DIFF, cmp.compared, signed=True)
                if cmp.has_reference
                else [],
                "detector": det if len(det) > 1 else [],
            }
        )
    return out


def _examples(examples: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Each example as its context plus rows of (method, reply, score(s)) strings."""
    out = []
    for e in examples or []:
        both = any(r.get("toxicity_context") is not None for r in e.get("replies", []))
        header = ["method", "reply", "toxicity"] + (["toxicity (contextual)"] if both else [])
        rows = [
            [str(r.get("method", "")), str(r.get("reply", "")), fmt(r.get("toxicity"))]
            + ([fmt(r.get("toxicity_context"))] if both else [])
            for r in e.get("replies", [])
        ]
        recall = e.get("recall_target")
        out.append(
            {
                "context": str(e.get("context", "")),
                "where": f"seed {e.get('seed')}"
                + ("" if recall is None else f", recall target {recall:g}")
                + f", context {e.get('id')}",
                "header": header,
                "rows": rows,
            }
        )
    return out


def render_comparison(
    rows: list[dict[str, Any]],
    title: str,
    *,
    reference: str = REFERENCE,
    examples: list[dict[str, Any]] | None = None,
    config: dict[str, Any] | None = None,
    seconds: float | None = None,
    pooled: list[dict[str, Any]] | None = None,
) -> str:
    """The comparison page for result rows (the dicts of results.json ``rows`` or the
    records of results.csv); the keyword sections are optional extras of a full
    experiment. Rows with an ``attack`` (attacked data, the experiment's ``attacks``) get
    a section each; the main tables are the clean rows'. ``pooled``: the experiment's
    paired differences pooled over seeds (:mod:`optimus_lib.experiment.pooled`). Raises
    :class:`OptimusError` on a row without seed/recall/method."""
    clean = [r for r in rows if not (isinstance(r, dict) and r.get("attack"))]
    cmp = compare(clean, reference)
    has_context = any(c["rtr_toxic_context"].value is not None for c in cmp.cells.values())
    import yaml

    return render(
        "comparison.html.j2",
        title=title,
        cmp=cmp,
        n_rows=len(rows),
        plot=png_base64(_figure(cmp)) if cmp.cells else "",
        one_recall=len(cmp.recalls) == 1,
        rtr_toxic=_side_by_side(cmp, "rtr_toxic", cmp.methods),
        rtr_benign=_side_by_side(cmp, "rtr_benign", cmp.methods),
        paired=_side_by_side(cmp, DIFF, cmp.compared, signed=True) if cmp.has_reference else [],
        rtr_toxic_context=_side_by_side(cmp, "rtr_toxic_context", cmp.methods)
        if has_context
        else [],
        paired_context=_side_by_side(cmp, DIFF_CONTEXT, cmp.compared, signed=True)
        if has_context and cmp.has_reference
        else [],
        pooled=pooled_table(pooled or []),
        paired_seeds=_per_seed_diffs(cmp) if cmp.has_reference and len(cmp.seeds) > 1 else [],
        metrics=_all_metrics(cmp),
        attacks=_attack_sections(rows, reference),
        examples=_examples(examples),
        config=yaml.safe_dump(config, sort_keys=False) if config else "",
        seconds="" if seconds is None else f"{seconds:g}",
    )
