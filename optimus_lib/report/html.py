"""A single self-contained HTML report (tables + an embedded PNG plot).

No JavaScript and no external assets: the page opens offline, attaches to an issue or
e-mail, and every number in it comes from metrics.json.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

COLUMNS = [
    ("rtr_toxic", "RTR toxic ctx", True),
    ("rtr_benign", "RTR benign ctx", True),
    ("rtr_trigger", "RTR triggered", True),
    ("perplexity", "ref. perplexity", True),
    ("similarity", "similarity", False),
    ("over_refusal", "over-refusal", True),
    ("distinct_2", "distinct-2", False),
]


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


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
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _verdict(gate: dict[str, Any] | None) -> list[str]:
    """The gate verdict: passed, or each failed gate with its value and limit."""
    if not gate:
        return []
    word = "PASSED" if gate["passed"] else "FAILED"
    color = "#186a3b" if gate["passed"] else "#a93226"
    items = "".join(f"<li>{html.escape(r)}</li>" for r in gate.get("reasons", []))
    checked = "".join(f"<li>{html.escape(c)}</li>" for c in gate.get("checked", []))
    return [
        f"<h2>Verdict: <span style='color:{color}'>{word}</span></h2>",
        f"<ul>{items}</ul>" if items else "",
        f"<p class='s'>Gates checked:</p><ul class='s'>{checked}</ul>" if checked else "",
    ]


def render_report(
    metrics: dict[str, Any], config_yaml: str, samples: list[dict[str, Any]] | None = None
) -> str:
    """The HTML page for a run's metrics.json (escaped: dataset text is hostile)."""
    methods = metrics["methods"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Optimus report</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;"
        "color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "pre{background:#f6f6f6;padding:1em;overflow:auto}.s{color:#666}</style></head><body>",
        f"<h1>Optimus run: {html.escape(str(metrics.get('name', '')))}</h1>",
        "<p class='s'>RTR = share of generated replies the evaluator "
        f"({html.escape(str(metrics.get('evaluator', '')))}) scores toxic. Perplexity is of "
        "held-out reference replies on benign dialogs. Lower is better except similarity "
        "and distinct-2.</p>",
        *_verdict(metrics.get("gate")),
        "<h2>Results</h2>",
        _table(results_table(methods)),
        f"<img alt='RTR by method' src='data:image/png;base64,{_plot(methods)}'>",
    ]
    det = metrics.get("detector")
    if det:
        rows = [["detector", "precision", "recall", "F1", "FPR", "AUC", "flagged"]]
        rows.append(
            [
                str(det.get("name", "")),
                _fmt(det.get("precision")),
                _fmt(det.get("recall")),
                _fmt(det.get("f1")),
                _fmt(det.get("fpr")),
                _fmt(det.get("auc")),
                _fmt(det.get("flagged")),
            ]
        )
        parts += ["<h2>Detector on the training set</h2>", _table(rows)]
    heal = metrics.get("healing")
    if heal:
        parts += ["<h2>Healing</h2>", _table([list(heal), [_fmt(v) for v in heal.values()]])]
    if samples:
        rows = [["method", "set", "context (last turn)", "reply", "toxicity"]]
        for s in samples:
            rows.append(
                [
                    s["method"],
                    s["set"],
                    s["context"][-1][:160],
                    s["reply"][:200],
                    _fmt(s["toxicity"]),
                ]
            )
        parts += ["<h2>Sample generations</h2>", _table(rows)]
    parts += [
        "<h2>Config</h2>",
        f"<pre>{html.escape(config_yaml)}</pre>",
        f"<p class='s'>Timings (s): {html.escape(str(metrics.get('timings', {})))}</p>",
        "</body></html>",
    ]
    return "\n".join(parts)
