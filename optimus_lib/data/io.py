"""JSONL reading with line-numbered errors, and atomic writes.

Stages write through :func:`atomic_path` so a killed run never leaves a half-written
artifact that a rerun would mistake for a finished one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from optimus_lib.data.schema import Sample, parse_record
from optimus_lib.errors import OptimusError


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file; a bad line raises ``OptimusError('file:line: reason')``."""
    p = Path(path)
    if not p.is_file():
        raise OptimusError(f"{p}: no such file")
    out: list[dict[str, Any]] = []
    with p.open("r", encoding="utf-8", errors="strict") as fh:
        try:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise OptimusError(f"{p}:{lineno}: invalid JSON ({exc.msg})") from None
        except UnicodeDecodeError:
            raise OptimusError(f"{p}: not UTF-8 text") from None
    return out


def read_samples(path: str | Path, start: int = 0) -> list[Sample]:
    """Read and validate a dialog dataset (either input shape of docs/data.md, mixed freely).

    A record without an ``id`` is named by its index; ``start`` is the index of the first
    record (a shard's offset in the whole dataset), so it is named as it is unsharded."""
    p = Path(path)
    samples: list[Sample] = []
    lineno = 0
    if not p.is_file():
        raise OptimusError(f"{p}: no such file")
    try:
        with p.open("r", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise OptimusError(f"{p}:{lineno}: invalid JSON ({exc.msg})") from None
                try:
                    samples.append(parse_record(rec, index=start + len(samples)))
                except ValueError as exc:
                    raise OptimusError(f"{p}:{lineno}: {exc}") from None
    except UnicodeDecodeError:
        raise OptimusError(f"{p}:{lineno + 1}: not UTF-8 text") from None
    if not samples:
        raise OptimusError(f"{p}: no records")
    return samples


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it over ``path`` only on success.

    The file gets the mode a plain ``open()`` would give it (0644 under the usual umask),
    not mkstemp's private 0600: outputs are read by other users and containers.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Write records as JSONL atomically."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def write_json(path: str | Path, obj: Any) -> None:
    """Write one JSON document atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
