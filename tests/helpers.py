"""Test helpers shared by several test modules (stubs and tiny file writers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from optimus_lib.data.schema import Sample
from optimus_lib.detect.base import Detector

OPTIMUS_CLI = [sys.executable, "-m", "cli"]


class StubDetector(Detector):
    """Scores from a function of the sample (or a fixed list), for wrapper tests."""

    def __init__(self, fn=None, scores=None, name="stub", threshold=0.5):
        self.fn = fn
        self.scores = scores
        self.name = name
        self.threshold = threshold
        self.calls: list[list[Sample]] = []

    def score(self, samples):
        self.calls.append(list(samples))
        if self.scores is not None:
            return list(self.scores)
        return [float(self.fn(s)) for s in samples]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def html_tables(page: str) -> dict[str, list[list[str]]]:
    """The tables of a report page, keyed by the text of the ``<h2>`` before each, as
    rows of unescaped cell text (header row first)."""
    from html.parser import HTMLParser

    class Tables(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.tables: dict[str, list[list[str]]] = {}
            self.heading: list[str] | None = None
            self.last = ""
            self.rows: list[list[str]] | None = None
            self.cell: list[str] | None = None

        def handle_starttag(self, tag, attrs):
            if tag == "h2":
                self.heading = []
            elif tag == "table":
                self.rows = self.tables.setdefault(self.last, [])
            elif tag == "tr" and self.rows is not None:
                self.rows.append([])
            elif tag in ("td", "th"):
                self.cell = []

        def handle_endtag(self, tag):
            if tag == "h2" and self.heading is not None:
                self.last, self.heading = "".join(self.heading).strip(), None
            elif tag == "table":
                self.rows = None
            elif tag in ("td", "th") and self.cell is not None and self.rows:
                self.rows[-1].append("".join(self.cell))
                self.cell = None

        def handle_data(self, data):
            if self.heading is not None:
                self.heading.append(data)
            if self.cell is not None:
                self.cell.append(data)

    parser = Tables()
    parser.feed(page)
    return parser.tables


def write_dialogs_and_pairs(folder: Path, turns: list[tuple[str, str, str]]) -> tuple[Path, Path]:
    """``(user, good reply, bad reply)`` turns as an SFT set (the good replies) and DPO
    pairs (good chosen over bad) in ``folder``: sft.jsonl and dpo.jsonl."""
    sft, prefs = folder / "sft.jsonl", folder / "dpo.jsonl"
    sft.write_text(
        "".join(
            json.dumps({"id": str(i), "context": [u], "response": g}) + "\n"
            for i, (u, g, _) in enumerate(turns)
        )
    )
    prefs.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": [{"role": "user", "content": u}],
                    "chosen": [{"role": "assistant", "content": g}],
                    "rejected": [{"role": "assistant", "content": b}],
                }
            )
            + "\n"
            for u, g, b in turns
        )
    )
    return sft, prefs
