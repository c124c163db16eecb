"""HTML page for an experiment sweep: RTR-vs-recall per method, utility, attacks."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import yaml

from optimus_lib.report.html import _fmt, _table


def _records_table(records: list[dict[str, Any]], columns: dict[str, str]) -> str:
    """A table of result records; ``columns`` maps record keys to headers."""
    return _table([list(columns.values())] + [[_fmt(r[k]) for k in columns] for r in records])


def _spread(e: dict[str, Any], key: str) -> tuple[float, float]:
    """Error bar below/above the point: the std over seeds, else the one-seed bootstrap
    interval, else none."""
    if e.get(key + "_std") is not None:
        return e[key + "_std"], e[key + "_std"]
    if e.get(key + "_lo") is not None:
        return max(0.0, e[key] - e[key + "_lo"]), max(0.0, e[key + "_hi"] - e[key])
    return 0.0, 0.0


def _rtr_plot(summary: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110, sharey=True)
    methods = list(dict.fromkeys(e["method"] for e in summary))
    for ax, key, title in (
        (axes[0], "rtr_toxic", "toxic contexts"),
        (axes[1], "rtr_benign", "benign contexts"),
    ):
        for m in methods:
            pts = sorted(
                (e["recall_target"], e[key], *_spread(e, key))
                for e in summary
                if e["method"] == m and e[key] is not None
            )
            if pts:
                xs, ys, below, above = zip(*pts)
                ax.errorbar(xs, ys, yerr=[below, above], marker="o", capsize=3, label=m)
        ax.set_xlabel("detector recall (target)")
        ax.set_title(f"RTR on {title}")
        ax.invert_xaxis()
    axes[0].set_ylabel("response toxicity rate")
    axes[1].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def render_experiment(res: dict[str, Any]) -> str:
    summary = res["summary"]
    util = [
        [
            "recall",
            "method",
            "seeds",
            "RTR toxic",
            "RTR benign",
            "RTR toxic − no defense [95 %, paired]",
            "mean toxicity (toxic ctx)",
            "perplexity",
            "similarity",
            "over-refusal",
            "distinct-2",
            "detector recall",
        ]
    ]

    def cell(e: dict[str, Any], k: str) -> str:
        if k == "rtr_toxic_diff":  # an interval only
            lo, hi = e.get(k + "_lo"), e.get(k + "_hi")
            return "" if lo is None else f"[{lo:+.3f}, {hi:+.3f}]"
        text = _fmt(e.get(k))
        if e.get(k + "_std") is not None:
            return text + f" ± {_fmt(e[k + '_std'])}"
        if e.get(k + "_lo") is not None:
            return text + f" [{_fmt(e[k + '_lo'])}, {_fmt(e[k + '_hi'])}]"
        return text

    for e in summary:
        util.append(
            [f"{e['recall_target']:g}", e["method"], str(e["seeds"])]
            + [
                cell(e, k)
                for k in (
                    "rtr_toxic",
                    "rtr_benign",
                    "rtr_toxic_diff",
                    "mean_toxicity_toxic",
                    "perplexity",
                    "similarity",
                    "over_refusal",
                    "distinct_2",
                    "detector_recall",
                )
            ]
        )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Optimus experiment</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 7px;text-align:right}pre{background:#f6f6f6;padding:1em}</style>"
        "</head><body>",
        f"<h1>Optimus experiment: {html.escape(res['name'])}</h1>",
        "<p>RTR: share of generated replies the independent evaluator scores toxic (lower is "
        "better). Mean ± standard deviation over seeds; with one seed, [95 % bootstrap "
        "interval over test contexts]; the paired column resamples the same contexts for both "
        "models, so an interval below 0 means fewer toxic replies than no_defense beyond "
        "resampling noise. Error bars in the plot are the same spreads. The detector is "
        "weakened on purpose to each target recall (METHOD.md); no_defense ignores it.</p>",
        f"<img alt='RTR vs recall' src='data:image/png;base64,{_rtr_plot(summary)}'>",
        "<h2>Toxicity and utility</h2>",
        _table(util),
    ]
    if res.get("attacks"):
        columns = {
            "seed": "seed",
            "detector": "detector",
            "attack": "attack",
            "caught_before": "caught before",
            "pass_after": "pass after",
            "success_rate": "success rate",
        }
        parts += [
            "<h2>Adaptive attacks on the detector</h2>",
            "<p>Toxic training samples the detector caught, rewritten by each attack; "
            "success = share that then passes unflagged.</p>",
            _records_table(res["attacks"], columns),
        ]
    if res.get("healer_attacks"):
        columns = {
            "seed": "seed",
            "style": "style",
            "n": "contexts",
            "toxic_unchecked": "toxic, unchecked",
            "toxic_after_rescore": "toxic after re-scoring",
            "fallback": "fallback",
        }
        parts += [
            "<h2>Adaptive attack on the healer</h2>",
            "<p>Toxic training samples whose last user turn orders the healer to write "
            "toxic text. Share of healed replies the evaluator scores toxic, with no "
            "re-scoring and as the pipeline heals (re-scored, retried, fixed-reply "
            "fallback); fallback = share that ended on the fixed reply.</p>",
            _records_table(res["healer_attacks"], columns),
        ]
    parts += [
        "<h2>Config</h2>",
        f"<pre>{html.escape(yaml.safe_dump(res['config'], sort_keys=False))}</pre>",
        f"<p>Wall time: {res['seconds']} s</p>" if res.get("seconds") else "",
        "</body></html>",
    ]
    return "\n".join(parts)
