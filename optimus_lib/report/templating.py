"""The Jinja2 environment the report pages render through.

Autoescaping is on for every template: samples, replies, gate reasons and config text
come from datasets and users, and a ``<script>`` in a training reply must stay text on
the page. Undefined variables raise instead of rendering as empty strings, so a renamed
field fails a test rather than silently blanking a table cell. Templates ship as
package data (``optimus_lib/report/templates/*.html.j2``).
"""

from __future__ import annotations

import base64
import io
import math
from functools import cache
from typing import Any


def fmt(v: Any) -> str:
    """A table cell: floats to 3 decimals, missing or NaN as ``n/a``."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


@cache
def environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("optimus_lib.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = fmt
    return env


def render(template: str, **context: Any) -> str:
    """Render ``templates/<template>`` with ``context`` (every value escaped)."""
    return environment().get_template(template).render(**context)


def png_base64(fig) -> str:
    """A matplotlib figure as base64 PNG (for an inline ``data:`` image), then closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()
