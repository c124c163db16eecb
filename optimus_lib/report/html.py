"""A single self-contained HTML report for one run (tables + an embedded PNG plot).

No JavaScript and no external assets: the page opens offline, attaches to an issue or
e-mail, and every number in it comes from metrics.json. The page is a Jinja2 template
(``templates/run.html.j2``) with autoescaping on, because samples and gate reasons carry
dataset text.
"""

from __future__ import annotations

from typing import Any

from optimus_lib.report.templating import fmt as _fmt
from optimus_lib.report.templating import png_base64, render

COLUMNS = [
    ("rtr_toxic", "RTR toxic ctx", True),
    ("rtr_benign", "RTR benign ctx", True),
    ("rtr_trigger", "RTR triggered", True),
    ("rtr_toxic_context", "RTR toxic ctx (contextual)", True),
    ("rtr_benign_context", "RTR benign ctx (contextual)", True),
    ("perplexity", "ref. perplexity", True),
    ("similarity", "similarity", False),
    ("over_refusal", "over-refusal", True),
    ("distinct_2", "distinct-2", False),
]


def results_table(methods: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Rows (header first) of the per-method results; used by the CLI and the page."""
    cols = [c for c in COLUMNS if any(m.get(c[0]) is not None for m in methods.values())]
    rows = [["method"] + [label for _, label, _ in cols]]
    for name, m in methods.items():
        rows.append([name] + [_fmt(m.get(key)) for key, _, _ in cols])
    return rows


def _plot(methods: dict[str, dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(methods)
    fig, ax = plt.subplots(figsize=(6.5, 3.2), dpi=110)
    xs = range(len(names))
    w = 0.38
    ax.bar(
        [x - w / 2 for x in xs], [methods[n]["rtr_toxic"] for n in names], w, label="toxic contexts"
    )
    ax.bar(
        [x + w / 2 for x in xs],
        [methods[n]["rtr_benign"] for n in names],
        w,
        label="benign contexts",
    )
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("response toxicity rate")
    ax.set_title("RTR by method (lower is better)")
    ax.legend(frameon=False)
    fig.tight_layout()
    return png_base64(fig)


def _detector_rows(det: dict[str, Any] | None) -> list[list[str]]:
    if not det:
        return []
    keys = ("precision", "recall", "f1", "fpr", "auc", "flagged")
    return [
        ["detector", "precision", "recall", "F1", "FPR", "AUC", "flagged"],
        [str(det.get("name", ""))] + [_fmt(det.get(k)) for k in keys],
    ]


def _sample_rows(samples: list[dict[str, Any]] | None) -> list[list[str]]:
    if not samples:
        return []
    rows = [["method", "set", "context (last turn)", "reply", "toxicity"]]
    for s in samples:
        last = s["context"][-1] if s["context"] else ""
        rows.append([s["method"], s["set"], last[:160], s["reply"][:200], _fmt(s["toxicity"])])
    return rows


def render_report(
    metrics: dict[str, Any], config_yaml: str, samples: list[dict[str, Any]] | None = None
) -> str:
    """The HTML page for a run's metrics.json (escaped: dataset text is hostile)."""
    methods = metrics["methods"]
    gate = metrics.get("gate")
    heal = metrics.get("healing")
    return render(
        "run.html.j2",
        name=str(metrics.get("name", "")),
        evaluator=str(metrics.get("evaluator", "")),
        gate=gate
        and {
            "passed": bool(gate["passed"]),
            "reasons": list(gate.get("reasons", [])),
            "checked": list(gate.get("checked", [])),
        },
        results=results_table(methods),
        plot=_plot(methods),
        detector=_detector_rows(metrics.get("detector")),
        healing=[list(heal), [_fmt(v) for v in heal.values()]] if heal else [],
        samples=_sample_rows(samples),
        config=config_yaml,
        timings=str(metrics.get("timings", {})),
    )
