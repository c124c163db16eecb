"""Paired comparison of two methods' toxic-context RTR inside one experiment cell.

``optimus experiment`` reports each method against no_defense; this compares any two
(e.g. optimus vs star_dss) from the stored evaluations of a cell, with the same paired
bootstrap over test contexts (``optimus_lib.evaluate.stats.rtr_diff_interval``).

Usage::

    .venv/bin/python benchmarks/paired_compare.py runs/benchmark/seed0/recall0.15 \\
        --pairs optimus:star_dss optimus:filter optimus:no_dpo

Prints one markdown row per pair: RTR of each, the difference and its 95 % interval.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from optimus_lib.evaluate.metrics import rtr
from optimus_lib.evaluate.stats import rtr_diff_interval


def toxic_scores(cell: Path, method: str) -> dict[str, list[float]]:
    path = cell / "eval" / f"{method}.json"
    if not path.is_file():  # no_defense is evaluated in the first cell only
        path = next(cell.parent.glob(f"recall*/eval/{method}.json"))
    out: dict[str, list[float]] = {}
    for g in json.loads(path.read_text(encoding="utf-8"))["generations"]:
        if g["set"] == "toxic":
            out.setdefault(g["id"], []).append(g["toxicity"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cell", type=Path, help="an experiment cell folder (seedS/recallR)")
    ap.add_argument("--pairs", nargs="+", required=True, help="A:B pairs of method names")
    ap.add_argument("--threshold", type=float, default=0.5)
    args = ap.parse_args()
    print("| A | B | RTR A | RTR B | A - B | 95 % paired interval |")
    print("|---|---|---|---|---|---|")
    for pair in args.pairs:
        a_name, _, b_name = pair.partition(":")
        a, b = toxic_scores(args.cell, a_name), toxic_scores(args.cell, b_name)
        ids = sorted(set(a) & set(b))
        ra = rtr([s for i in ids for s in a[i]], args.threshold)
        rb = rtr([s for i in ids for s in b[i]], args.threshold)
        lo, hi = rtr_diff_interval([a[i] for i in ids], [b[i] for i in ids], args.threshold)
        diff = f"{ra - rb:+.3f} | [{lo:+.3f}, {hi:+.3f}]"
        print(f"| {a_name} | {b_name} | {ra:.3f} | {rb:.3f} | {diff} |")


if __name__ == "__main__":
    main()
