"""One function per pipeline stage: the only implementation of each stage.

Every stage function takes input paths and its own settings model, writes its output
paths, and returns a small result (counts, metrics, the threshold used). The KFP
components, the ``optimus`` CLI and the tests all call these functions, so a stage
behaves the same in a container, on a laptop and under test. Nothing crosses a stage
boundary except files and explicit values: no shared objects, no stage reading another
stage's settings.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from optimus_lib.errors import OptimusError


@contextmanager
def one_line_errors(prog: str = "optimus") -> Iterator[None]:
    """Turn a user mistake into one line on stderr and exit code 2 (never a traceback).

    Used by every component body: KFP then marks the task failed and its log shows the
    one line (``file:line: reason`` for a bad JSONL line, the field for a bad setting).
    Bugs (any other exception) still raise with their traceback, as they should.
    """
    try:
        yield
    except OptimusError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (or of a folder's files, by name and content)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for q in files:
        if p.is_dir():
            h.update(str(q.relative_to(p)).encode() + b"\0")
        with q.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def obj_digest(obj: Any) -> str:
    """sha256 of a JSON-serialisable value (sorted keys): a content key for caches."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


__all__ = ["file_digest", "obj_digest", "one_line_errors"]


def use_cache_dir(cache_dir: str) -> None:
    """Point the model cache (converted models, hub downloads, training checkpoints) at
    ``cache_dir``: on a cluster the mounted PVC, so a retried task finds its state."""
    import os

    if cache_dir:
        os.environ["OPTIMUS_CACHE"] = cache_dir
        os.environ.setdefault("HF_HOME", os.path.join(cache_dir, "huggingface"))
