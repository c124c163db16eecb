"""The training stage on several processes: the per-rank entry point and its launcher.

``python -m optimus_lib.stages.launch --settings-json ... --sft-data ... --adapter-out ...``
is what every rank runs: it calls the same :func:`optimus_lib.stages.train.train` as a
single process, under ``torchrun`` (here, through :func:`run_processes`) or under the
Kubeflow Trainer torch runtime (a TrainJob: the runtime sets the ``PET_*`` variables that
torchrun reads). The image is the same as for one process.

Why not one process with threads or ``accelerate launch``: torchrun is the launcher the
Trainer runtime uses on a cluster, so the command that runs here is the command a
TrainJob runs, and Accelerate (inside the HF Trainer) sets itself up from the
environment torchrun gives each rank, DDP by default and FSDP / ZeRO-3 from the
settings (``train.distributed.strategy``).

Failures: each rank that fails writes its one-line reason to the errors folder, and the
launcher reports the first (a user mistake before a rank's crash from a lost peer);
torchrun stops the other ranks when one exits, the process-group timeout bounds a
collective that waits for a rank that hangs, and the launch timeout bounds the whole run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optimus_lib.errors import OptimusError

ENTRY_MODULE = "optimus_lib.stages.launch"


def visible_accelerators() -> int:
    """CUDA devices this process may use (``CUDA_VISIBLE_DEVICES`` applies); 0 on CPU."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_processes(processes: int) -> int:
    """``processes`` as given, or for 0 one per visible accelerator (1 without any)."""
    if processes < 0:
        raise OptimusError(f"processes: must be 0 (one per accelerator) or more, got {processes}")
    return processes or max(1, visible_accelerators())


def rank_args(
    settings_json: str,
    sft_data: Path | str,
    adapter_out: Path | str,
    preferences: Path | str | None = None,
    result: Path | str | None = None,
    errors: Path | str | None = None,
) -> list[str]:
    """The arguments of the per-rank entry point (after ``-m optimus_lib.stages.launch``)."""
    args = ["--settings-json", settings_json, "--sft-data", str(sft_data)]
    args += ["--adapter-out", str(adapter_out)]
    if preferences is not None:
        args += ["--preferences", str(preferences)]
    if result is not None:
        args += ["--result", str(result)]
    if errors is not None:
        args += ["--errors", str(errors)]
    return args


def result_to_json(result: Any) -> dict[str, Any]:
    return {
        "adapter": str(result.adapter),
        "method": result.method,
        "sft_samples": result.sft_samples,
        "dpo_pairs": result.dpo_pairs,
        "key": result.key,
        "metrics": result.metrics,
        "metadata": result.metadata,
    }


def result_from_json(data: dict[str, Any]):
    from optimus_lib.stages.train import TrainResult

    return TrainResult(
        Path(data["adapter"]), data["method"], data["sft_samples"], data["dpo_pairs"],
        data["key"], data["metrics"], data["metadata"],
    )  # fmt: skip


def _write_error(errors: str | None, rank: int, line: str, user: bool) -> None:
    if not errors:
        return
    folder = Path(errors)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"rank": rank, "time": time.time(), "line": line, "user": user}
    (folder / f"rank{rank}.json").write_text(json.dumps(record), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """One rank of the training stage; rank 0 writes the result JSON."""
    p = argparse.ArgumentParser(prog="python -m " + ENTRY_MODULE, description=__doc__)
    p.add_argument("--settings-json", required=True, help="TrainSettings as JSON")
    p.add_argument("--sft-data", required=True, type=Path)
    p.add_argument("--preferences", type=Path, default=None)
    p.add_argument("--adapter-out", required=True, type=Path)
    p.add_argument("--result", type=Path, default=None, help="rank 0 writes the result here")
    p.add_argument("--errors", default=None, help="folder for each failing rank's reason")
    a = p.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        from optimus_lib.settings import load_settings
        from optimus_lib.stages.train import TrainSettings, train

        try:
            raw = json.loads(a.settings_json)
        except json.JSONDecodeError as exc:
            raise OptimusError(f"--settings-json: not JSON ({exc.msg})") from None
        s = load_settings(TrainSettings, raw)
        result = train(s, a.sft_data, a.adapter_out, a.preferences)
    except OptimusError as exc:
        _write_error(a.errors, rank, str(exc), True)
        print(f"optimus: error: rank {rank}: {exc}", file=sys.stderr, flush=True)
        return 2
    except BaseException as exc:  # a crash: keep the traceback, name the rank first
        if not isinstance(exc, SystemExit | KeyboardInterrupt):
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            _write_error(a.errors, rank, f"{type(exc).__name__}: {first}", False)
        raise
    if rank == 0 and a.result is not None:
        a.result.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.result.with_name(a.result.name + ".tmp")
        tmp.write_text(json.dumps(result_to_json(result)), encoding="utf-8")
        os.replace(tmp, a.result)
    return 0


def _first_error(errors: Path) -> str | None:
    """The reason of the rank that failed first: a user mistake over a crash (a rank that
    lost its peer crashes too, later), then the earliest."""
    records = []
    for f in sorted(errors.glob("rank*.json")):
        try:
            records.append(json.loads(f.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    if not records:
        return None
    first = min(records, key=lambda r: (not r["user"], r["time"]))
    return f"rank {first['rank']}: {first['line']}"


def torchrun_command(processes: int, entry: Sequence[str] | None = None) -> list[str]:
    """``python -m torch.distributed.run`` on this node with ``processes`` ranks, no
    restarts (a retry is the task's, and it resumes from the checkpoints)."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
        f"--nproc-per-node={processes}", "--max-restarts=0", "--monitor-interval=0.5",
        *(entry or ["-m", ENTRY_MODULE]),
    ]  # fmt: skip


def run_processes(
    settings: Any,
    sft_data: Path,
    adapter_out: Path,
    preferences: Path | None,
    processes: int,
    entry: Sequence[str] | None = None,
):
    """Run the training stage on ``processes`` ranks of this node and return rank 0's
    :class:`~optimus_lib.stages.train.TrainResult`.

    ``entry`` replaces ``-m optimus_lib.stages.launch`` (a script that wraps :func:`main`;
    tests use it to make a rank fail). A failing rank raises one OptimusError line with
    that rank's reason; the launch timeout kills every rank and raises.
    """
    from optimus_lib.train.trainers import split_batch

    for name, cfg in (("sft", settings.sft), ("dpo", settings.dpo)):  # fail before starting
        split_batch(cfg.batch_size, cfg.grad_accum, processes, name)
    timeout = settings.distributed.launch_timeout_s
    with tempfile.TemporaryDirectory(prefix="optimus-launch-") as tmp:
        work = Path(tmp)
        args = rank_args(
            settings.model_dump_json(), sft_data, adapter_out, preferences,
            work / "result.json", work / "errors",
        )  # fmt: skip
        cmd = [*torchrun_command(processes, entry), *args]
        tail: collections.deque[str] = collections.deque(maxlen=40)
        proc = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True
        )

        def pump() -> None:  # the ranks' stderr into the task log, keeping the tail
            assert proc.stderr is not None
            for line in proc.stderr:
                sys.stderr.write(line)
                tail.append(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise OptimusError(
                f"training on {processes} processes did not finish within {timeout} s "
                "(train.distributed.launch_timeout_s); every rank was stopped"
            ) from None
        except BaseException:
            _kill_group(proc)
            raise
        reader.join(timeout=5)
        if code != 0:
            reason = _first_error(work / "errors")
            if reason is None:  # killed (out of memory, a signal) before it could say why
                last = next((ln for ln in reversed(list(tail)) if ln.strip()), "")
                reason = f"the launcher exited with code {code}" + (
                    f"; last log line: {last.strip()[:300]}" if last else ""
                )
            raise OptimusError(f"training on {processes} processes failed: {reason}")
        result = work / "result.json"
        if not result.is_file():
            raise OptimusError(f"training on {processes} processes wrote no result (rank 0)")
        return result_from_json(json.loads(result.read_text(encoding="utf-8")))


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop torchrun and every rank it started (they share its process group)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
