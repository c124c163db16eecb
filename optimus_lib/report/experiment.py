"""The experiment's report.html: the comparison page plus the sweep's extras."""

from __future__ import annotations

from typing import Any

from optimus_lib.report.comparison import render_comparison


def render_experiment(res: dict[str, Any]) -> str:
    """The page for a results.json document (``rows``, ``examples``, ``config``,
    ``seconds``, ``pooled``); the tables, the attack sections and the plot come from ``rows``."""
    return render_comparison(
        res["rows"],
        f"Optimus experiment: {res['name']}",
        examples=res.get("examples"),
        config=res.get("config"),
        seconds=res.get("seconds"),
        pooled=res.get("pooled"),
    )
