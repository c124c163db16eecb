"""Data-parallel map for the inference stages (scan, heal) under ``accelerate launch``.

Each process takes every ``world``-th item (rank, rank + world, ...), writes its results
to a shard file, and after a barrier every process reads all shards back and reassembles
them in input order. A shard file that already exists for the same key is reused, so a
killed multi-process scan resumes per shard. With one process this is a plain map (plus
the same resumable shard file), so the single- and multi-process outputs are identical.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from optimus_lib.data.io import read_jsonl, write_jsonl

T = TypeVar("T")


def _state():
    """Accelerate's process state when launched by it, else a single process."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def sharded_map(
    items: list[T],
    fn: Callable[[list[T]], list[Any]],
    out_path: Path,
    key: str,
) -> list[Any]:
    """``fn`` over ``items`` split across processes; results in input order everywhere."""
    state = _state()
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    shard = lambda r: out_path.parent / f".{out_path.name}.{key}.{r}of{world}.jsonl"  # noqa: E731
    mine = shard(rank)
    if not mine.is_file():
        part = items[rank::world]
        results = fn(part) if part else []
        write_jsonl(mine, [{"r": json.loads(json.dumps(r))} for r in results])
    if state:
        state.wait_for_everyone()
    parts = [[row["r"] for row in read_jsonl(shard(r))] for r in range(world)]
    out: list[Any] = [None] * len(items)
    for r, part in enumerate(parts):
        out[r::world] = part
    if state:
        state.wait_for_everyone()
    if rank == 0:
        for r in range(world):
            shard(r).unlink(missing_ok=True)
    return out


def is_main_process() -> bool:
    state = _state()
    return state is None or state.is_main_process


def world_size() -> int:
    """Processes in the job (``accelerate launch`` sets ``WORLD_SIZE``); 1 otherwise."""
    import os

    return max(1, int(os.environ.get("WORLD_SIZE", "1")))
