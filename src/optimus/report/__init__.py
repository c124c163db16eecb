"""Stage 5: one self-contained HTML page plus metrics.json."""

from optimus.report.html import render_report, results_table

__all__ = ["render_report", "results_table"]
