"""Progress of a long task as plain log lines: what it does, how far, elapsed and ETA.

A scan, a heal or a training run can work for minutes without a word. Every loop that
does the work (the engine's batches, the training steps) reports here, and this module
writes at most one line every few seconds to stderr::

    optimus: progress: classify · score 96/400 records · 0:41 elapsed · eta 2:10

Plain lines, not a bar: on a cluster stderr is the pod log, which keeps lines and not
carriage returns; the local runner picks the latest line out of the task's output and
shows it live on the terminal (``deploy/local.py``). ``OPTIMUS_PROGRESS_SECONDS`` sets
the interval (default 5; 0 turns the lines off).

The stage name comes from :func:`stage` (a context set once by the stage function), so
the engine, which serves every stage, needs no stage argument.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any, TextIO, TypeVar

PREFIX = "optimus: progress: "
DEFAULT_SECONDS = 5.0
T = TypeVar("T")

_stage: ContextVar[str] = ContextVar("optimus_progress_stage", default="")


def interval() -> float:
    """Seconds between two lines (``OPTIMUS_PROGRESS_SECONDS``; 0: no lines)."""
    raw = os.environ.get("OPTIMUS_PROGRESS_SECONDS", "")
    try:
        return max(0.0, float(raw)) if raw.strip() else DEFAULT_SECONDS
    except ValueError:
        return DEFAULT_SECONDS


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Name the stage the progress lines inside this block belong to."""
    token = _stage.set(name)
    try:
        yield
    finally:
        _stage.reset(token)


def staged(name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorate a stage function: the progress lines of everything it calls name it."""

    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> T:
            with stage(name):
                return fn(*args, **kwargs)

        return inner

    return wrap


def clock(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` past an hour)."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eta(done: float, total: float | None, elapsed: float) -> float | None:
    """Seconds left at the rate so far; None before the first unit or without a total."""
    if not total or done <= 0 or elapsed <= 0:
        return None
    return max(0.0, elapsed * (total - done) / done)


def format_line(
    what: str,
    done: float,
    total: float | None,
    unit: str,
    elapsed: float,
    stage_name: str = "",
    extra: str = "",
) -> str:
    """One progress line (without the trailing newline)."""
    count = f"{done:g}/{total:g}" if total else f"{done:g}"
    label = f"{stage_name} · {what}" if stage_name else what
    parts = [f"{label} {count} {unit}".strip()]
    if extra:
        parts.append(extra)
    parts.append(f"{clock(elapsed)} elapsed")
    left = eta(done, total, elapsed)
    parts.append("eta " + (clock(left) if left is not None else "?"))
    return PREFIX + " · ".join(parts)


class Progress:
    """Counts units of work and writes a line at most every ``every`` seconds, the first
    once ``every`` seconds have passed (a call quicker than that writes nothing), and a
    last one when work that wrote lines is done."""

    def __init__(
        self,
        what: str,
        total: float | None,
        unit: str = "records",
        every: float | None = None,
        stream: TextIO | None = None,
        now: Callable[[], float] = time.monotonic,
        enabled: bool = True,
    ) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.every = interval() if every is None else every
        self.stream = stream
        self.now = now
        self.enabled = enabled and self.every > 0
        self.stage = _stage.get()
        self.done: float = 0
        self.extra = ""
        self.start = now()
        self._last = self.start
        self.lines: list[str] = []  # what was written (tests, and a final summary)

    def line(self) -> str:
        elapsed = self.now() - self.start
        return format_line(
            self.what, self.done, self.total, self.unit, elapsed, self.stage, self.extra
        )

    def _emit(self) -> None:
        if not self.enabled:
            return
        text = self.line()
        self.lines.append(text)
        out = self.stream or sys.stderr
        out.write(text + "\n")
        out.flush()
        self._last = self.now()

    def update(self, n: float = 1, extra: str | None = None) -> None:
        """``n`` more units done (``extra``: e.g. the latest loss)."""
        self.done += n
        if extra is not None:
            self.extra = extra
        if self.now() - self._last >= self.every:
            self._emit()

    def set(self, done: float, extra: str | None = None) -> None:
        """The count so far (training steps come as a running total)."""
        self.update(done - self.done, extra)

    def finish(self) -> None:
        if self.lines and self.lines[-1] != self.line():
            self._emit()


def track(
    items: Iterable[T],
    what: str,
    total: float | None = None,
    size: Callable[[T], float] | None = None,
    unit: str = "records",
    **kwargs: Any,
) -> Iterator[T]:
    """Yield ``items``, counting each as ``size(item)`` units (1 by default) once the
    caller has finished with it. Works without a terminal: lines, not a bar."""
    items = list(items) if total is None and size is not None else items
    if total is None:
        try:
            total = sum(size(x) for x in items) if size else len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    p = Progress(what, total, unit, **kwargs)
    for item in items:
        yield item
        p.update(size(item) if size else 1)
    p.finish()


def trainer_callback(what: str):
    """A transformers ``TrainerCallback`` that reports optimizer steps (and the latest
    loss) as progress lines, from the main process only."""
    from transformers import TrainerCallback

    class _Steps(TrainerCallback):
        def __init__(self) -> None:
            self.progress: Progress | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.progress = Progress(what, state.max_steps or None, "steps")

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.set(state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if self.progress is not None and isinstance(loss, (int, float)):
                self.progress.extra = f"loss {loss:.3f}"

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.finish()

    return _Steps()
