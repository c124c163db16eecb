"""Sharding an inference stage across tasks: split a dataset into contiguous shards, and
find each shard again on the other side.

A pipeline with ``shards: N`` runs classify and heal once per shard (one pod each on a
cluster) and merges their outputs back into input order. Shards are contiguous runs of
records, so concatenating the per-shard outputs in shard order is the input order; each
shard knows its offset (``start``) in the whole dataset, so a record without an ``id``
is named by its index in the dataset, as it is unsharded. Nothing a shard computes
depends on the other shards (scores are per record, sampling seeds derive from each
record's id: :mod:`optimus_lib.seeds`); what needs the whole dataset (the classify
threshold: calibration, weakening, flagging) is done after the merge.

Split balances the work, not the bytes: classify's work is one score per record, heal's
one generation per *flagged* record, so heal's shards hold equal numbers of flagged
records (``balance="flagged"``) and may differ widely in length.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Literal

from optimus_lib.data.io import read_jsonl, write_json, write_jsonl
from optimus_lib.errors import OptimusError

MANIFEST = "manifest.json"
MAX_SHARDS = 1024  # one pod each: more is a mistake, not a plan


@dataclass(frozen=True)
class Shard:
    """One shard: its index, its file, and where its records sit in the whole dataset."""

    index: int
    path: Path
    start: int
    rows: int
    of: int  # how many shards the split wrote
    threshold: float | None = None  # classify's, recorded with heal's shards

    def metadata(self) -> dict[str, int]:
        """What a per-shard task records on its outputs, for :func:`in_order`."""
        return {"shard": self.index, "shards": self.of, "start": self.start}


def _bounds(weights: list[int], shards: int) -> list[int]:
    """Cut points ``[0, ..., len(weights)]`` of ``shards`` contiguous runs of equal total
    weight, as near as whole records allow; no run is empty."""
    prefix = list(accumulate(weights))
    total = prefix[-1]
    cuts = [0]
    for k in range(1, shards):
        end = bisect_left(prefix, -(-k * total // shards)) + 1  # reaches k/shards of it
        end = min(max(end, cuts[-1] + 1), len(weights) - (shards - k))
        cuts.append(end)
    return [*cuts, len(weights)]


def split_dataset(
    src: Path,
    out_dir: Path,
    shards: int,
    balance: Literal["records", "flagged"] = "records",
    threshold: float | None = None,
) -> list[Shard]:
    """Write ``src`` (JSONL) as up to ``shards`` contiguous shard files under ``out_dir``
    (``<i>.jsonl`` plus ``manifest.json``); returns the shards written.

    ``balance="records"``: equal numbers of records. ``balance="flagged"``: equal numbers
    of flagged records (classify's output; heal's work); with fewer flagged records than
    shards, one shard per flagged record (one shard in all when none is flagged). A
    dataset smaller than ``shards`` gets one shard per record. ``threshold``: classify's,
    recorded with the shards for heal (a loop's tasks get it from the data, not as a
    parameter: kfp.local 2.17 hands a task inside a loop the loop's item in place of any
    other task's output parameter).
    """
    if not 1 <= shards <= MAX_SHARDS:
        raise OptimusError(f"shards must be between 1 and {MAX_SHARDS}, got {shards}")
    records = read_jsonl(src)
    if not records:
        raise OptimusError(f"{src}: no records")
    if balance == "flagged":
        for i, r in enumerate(records, start=1):
            if not isinstance(r.get("flagged"), bool):
                raise OptimusError(f"{src}:{i}: no boolean 'flagged' field (classify first)")
        weights = [int(r["flagged"]) for r in records]
        n = min(shards, max(1, sum(weights)))
        if sum(weights) == 0:
            weights = [1] * len(records)
    elif balance == "records":
        weights = [1] * len(records)
        n = min(shards, len(records))
    else:
        raise OptimusError(f"balance must be 'records' or 'flagged', got {balance!r}")
    cuts = _bounds(weights, n)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for k, (a, b) in enumerate(zip(cuts, cuts[1:])):
        path = out_dir / f"{k}.jsonl"
        write_jsonl(path, records[a:b])
        written.append(Shard(k, path, a, b - a, n, threshold))
    manifest = {
        "rows": len(records),
        "balance": balance,
        **({} if threshold is None else {"threshold": float(threshold)}),
        "shards": [{"file": s.path.name, "start": s.start, "rows": s.rows} for s in written],
    }
    write_json(out_dir / MANIFEST, manifest)
    return written


def shard_of(folder: Path, index: int) -> Shard:
    """Shard ``index`` of a folder :func:`split_dataset` wrote."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise OptimusError(f"{folder}: not a split dataset (no {MANIFEST})")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    listed = manifest["shards"]
    if not 0 <= index < len(listed):
        raise OptimusError(f"{folder}: no shard {index} (it has {len(listed)})")
    s, threshold = listed[index], manifest.get("threshold")
    return Shard(index, folder / s["file"], int(s["start"]), int(s["rows"]), len(listed), threshold)


def in_order(parts: list[tuple[Path, dict]]) -> list[tuple[Path, dict]]:
    """Per-shard outputs ``(path, metadata)`` sorted by the ``shard`` index their tasks
    recorded (a fan-in's order is not promised), checked to be shards 0..N-1 of one split."""
    try:
        keyed = sorted(parts, key=lambda p: int(p[1]["shard"]))
        found = [int(m["shard"]) for _, m in keyed]
        of = {int(m["shards"]) for _, m in keyed}
    except (KeyError, TypeError, ValueError):
        raise OptimusError("merge: a part has no 'shard' / 'shards' metadata") from None
    if found != list(range(len(parts))) or of != {len(parts)}:
        raise OptimusError(f"merge: expected shards 0..{len(parts) - 1}, got {found}")
    return keyed
