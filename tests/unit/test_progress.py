"""Progress lines: their format and ETA, when they are written, and that the local runner
shows a task's latest line on the terminal while kfp.local keeps the rest in tasks.log."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from optimus_lib import progress
from optimus_lib.progress import PREFIX, Progress, clock, eta, format_line, stage, track

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_clock_eta_and_the_line():
    assert clock(0) == "0:00" and clock(61.4) == "1:01" and clock(3725) == "1:02:05"
    assert eta(0, 10, 5.0) is None and eta(3, None, 5.0) is None
    assert eta(25, 100, 10.0) == pytest.approx(30.0)
    line = format_line("score", 96, 400, "records", 41.0, "classify")
    assert line == PREFIX + "classify · score 96/400 records · 0:41 elapsed · eta 2:10"
    assert format_line("steps", 3, None, "steps", 2.0).endswith("3 steps · 0:02 elapsed · eta ?")


def test_lines_are_throttled_and_a_quick_call_writes_none():
    now, out = Clock(), io.StringIO()
    p = Progress("generate", 10, every=5.0, stream=out, now=now)
    p.update(2)  # no time has passed: nothing yet
    now.t += 6
    p.update(2)  # 4/10 after 6 s: eta 9 s
    now.t += 1
    p.update(2)  # within the interval: kept back
    now.t += 5
    p.update(4)
    p.finish()  # already reported 10/10 at this instant: no repeat
    assert out.getvalue().splitlines() == [
        PREFIX + "generate 4/10 records · 0:06 elapsed · eta 0:09",
        PREFIX + "generate 10/10 records · 0:12 elapsed · eta 0:00",
    ]
    quick = io.StringIO()
    q = Progress("score", 3, every=5.0, stream=quick, now=now)
    q.update(3)
    q.finish()
    assert quick.getvalue() == ""


def test_track_counts_records_per_batch_under_the_stage_name(monkeypatch):
    now, out = Clock(), io.StringIO()
    batches = [[0, 1, 2], [3, 4], [5]]
    with stage("heal"):
        seen = []
        for b in track(batches, "generate", total=6, size=len, every=1.0, stream=out, now=now):
            now.t += 2  # each batch takes 2 s
            seen.append(b)
    assert seen == batches
    lines = out.getvalue().splitlines()
    assert lines[0] == PREFIX + "heal · generate 3/6 records · 0:02 elapsed · eta 0:02"
    assert lines[-1].startswith(PREFIX + "heal · generate 6/6 records · 0:06 elapsed")
    monkeypatch.setenv("OPTIMUS_PROGRESS_SECONDS", "0")  # off
    assert progress.interval() == 0.0
    silent = io.StringIO()
    list(track(batches, "generate", total=6, size=len, stream=silent, now=now))
    assert silent.getvalue() == ""
    monkeypatch.setenv("OPTIMUS_PROGRESS_SECONDS", "soon")
    assert progress.interval() == progress.DEFAULT_SECONDS


def test_the_engine_reports_records_scored(tiny_engine, monkeypatch, capsys):
    """The engine's batch loop writes progress lines to stderr (interval 0+: every batch)."""
    monkeypatch.setenv("OPTIMUS_PROGRESS_SECONDS", "1e-9")
    prompts = [tiny_engine.chat_ids([{"role": "user", "content": f"hi {i}"}]) for i in range(5)]
    with stage("classify"):
        tiny_engine.next_token_probs(prompts, [[1], [2]])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith(PREFIX)]
    assert err and err[-1].startswith(PREFIX + "classify · score 5/5 records")


def test_training_steps_callback(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setenv("OPTIMUS_PROGRESS_SECONDS", "1e-9")
    cb = progress.trainer_callback("SFT steps")
    state = SimpleNamespace(is_world_process_zero=True, max_steps=4, global_step=0)
    cb.on_train_begin(None, state, None)
    out = io.StringIO()
    cb.progress.stream = out
    for step in (1, 2):
        state.global_step = step
        cb.on_log(None, state, None, logs={"loss": 2.5})
        cb.on_step_end(None, state, None)
    cb.on_train_end(None, state, None)
    last = out.getvalue().splitlines()[-1]
    assert last.startswith(PREFIX + "SFT steps 2/4 steps · loss 2.500 · ")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


KFP_START = "12:00:01.123 - INFO - Executing task 'heal'\n"
KFP_END = "12:00:09.456 - INFO - Task 'heal' finished with status SUCCESS\n"
LINE_1 = "    optimus: progress: heal · generate 4/10 records · 0:05 elapsed · eta 0:07\n"
LINE_2 = "    optimus: progress: heal · generate 10/10 records · 0:09 elapsed · eta 0:00\n"


def test_local_runner_shows_the_latest_progress_line_live():
    from deploy.local import _Tee

    log, term = io.StringIO(), Terminal()
    tee = _Tee(log, progress=term)
    for chunk in (KFP_START, LINE_1[:20], LINE_1[20:], LINE_2, KFP_END):  # kfp.local's stream
        tee.write(chunk)
    tee.clear()
    assert log.getvalue() == KFP_START + LINE_1 + LINE_2 + KFP_END  # tasks.log: everything
    shown = term.getvalue()
    assert shown.startswith(KFP_START)
    # each progress line replaces the one before on the same terminal line ...
    assert "\r\x1b[K  heal · generate 4/10 records" in shown
    assert "\r\x1b[K  heal · generate 10/10 records · 0:09 elapsed · eta 0:00" in shown
    # ... and is cleared before kfp.local's next line
    assert shown.endswith("eta 0:00\r\x1b[K" + KFP_END)
    assert "\n  heal" not in shown


def test_local_runner_writes_progress_lines_to_a_pipe():
    from deploy.local import _Tee

    log, pipe = io.StringIO(), io.StringIO()
    tee = _Tee(log, progress=pipe)
    tee.write(KFP_START + LINE_1 + "some other task output\n" + KFP_END)
    assert pipe.getvalue().splitlines() == [
        KFP_START.strip(),
        "  heal · generate 4/10 records · 0:05 elapsed · eta 0:07",
        KFP_END.strip(),
    ]
