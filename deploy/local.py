"""Run the pipelines on this machine with kfp.local (``optimus run``, ``optimus experiment``).

Every task runs as a subprocess of the current interpreter (``SubprocessRunner(use_venv=
False)``), so the installed optimus_lib is used and nothing is pulled. The pipelines are
built for kfp.local (``cluster=False``: no Kubernetes settings, no retries, one loop
iteration at a time), and kfp.local has no caching: a local run always runs every stage.
Outputs land in ``<pipeline_root>/optimus-<pipeline>-<time>/<task>/``.

Before the first task starts, the local paths the settings name (training and
evaluation data) are checked here, and the git commit of the checkout is handed to the
tasks for the registry's lineage.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import re
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from pipelines.defense import build_defense_pipeline, defense_pipeline
from pipelines.experiment import build_experiment_pipeline

# Written by optimus_lib.stages.one_line_errors in a failing task.
_ERROR_LINE = re.compile(r"^\s*optimus: error: (.*)$")
# kfp.local's own progress lines ("12:00:01.123 - INFO - Task 'heal' finished ...").
_PROGRESS_LINE = re.compile(
    r"^\d\d:\d\d:\d\d\.\d+ - [A-Z]+ - .*(Running pipeline|Executing task|finished with status)"
)


# What optimus_lib.progress writes while a task works ("optimus: progress: heal · ...").
_TASK_PROGRESS = re.compile(r"^\s*optimus: progress: (.*)$")


class _Tee(io.TextIOBase):
    """Where stdout goes during a local run: everything to ``out``; kfp.local's progress
    lines and the tasks' own progress lines also to ``progress`` (the terminal when
    ``out`` is a log file); remembers the last one-line user error a task printed.

    On a terminal the latest task progress line is one live line, rewritten in place and
    cleared before kfp.local's next line; elsewhere (a pipe, CI) each one is a line."""

    def __init__(self, out: Any, progress: Any = None) -> None:
        self.out = out
        self.progress = progress
        self.error: str | None = None
        self._partial = ""
        self._live = False  # a live line is on the terminal
        isatty = getattr(progress, "isatty", None)
        self._tty = bool(isatty and isatty())

    def write(self, text: str) -> int:
        self.out.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            m = _ERROR_LINE.match(line)
            if m:
                self.error = m.group(1).strip()
            if self.progress is None:
                continue
            if _PROGRESS_LINE.match(line):
                self.clear()
                self.progress.write(line + "\n")
            elif m := _TASK_PROGRESS.match(line):
                self._show(m.group(1).strip())
        return len(text)

    def _show(self, status: str) -> None:
        if self._tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.progress.write("\r\x1b[K  " + status[: max(10, width - 2)])
            self._live = True
        else:
            self.progress.write(f"  {status}\n")
        self.progress.flush()

    def clear(self) -> None:
        if self._live:
            self.progress.write("\r\x1b[K")
            self._live = False

    def flush(self) -> None:
        self.out.flush()
        if self.progress is not None:
            self.progress.flush()


def parameters(pipeline: Any = defense_pipeline) -> list[str]:
    """A pipeline's parameter names (default: the defense pipeline's)."""
    return list(inspect.signature(pipeline.pipeline_func).parameters)


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _run_pipeline(
    pipeline: Any, arguments: dict[str, Any], pipeline_root: Path, log: TextIO | None
) -> Any:
    """Run ``pipeline`` under kfp.local; a failed task becomes one OptimusError line (the
    task's own one-line error when it printed one)."""
    from kfp import local

    from optimus_lib.errors import OptimusError

    known = parameters(pipeline)
    unknown = sorted(set(arguments) - set(known))
    if unknown:
        raise OptimusError(
            f"unknown pipeline parameter(s) {', '.join(unknown)} (known: {', '.join(known)})"
        )
    args = {k: v for k, v in arguments.items() if v is not None}
    args.setdefault("cache_dir", "")
    _check_local_inputs(args)
    os.environ.setdefault("OPTIMUS_GIT_SHA", git_sha())
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    tee = _Tee(sys.stdout) if log is None else _Tee(log, progress=sys.stdout)
    try:
        with contextlib.redirect_stdout(tee), warnings.catch_warnings():
            # Expected here: "settings [cpu_limit, accelerator, ...] have no effect in the
            # current local runner", "... custom or non-Python base image ...".
            warnings.filterwarnings("ignore", message=".*have no effect in the current local")
            warnings.filterwarnings("ignore", message="You may be attemping to run a task")
            return pipeline(**args)
    except RuntimeError as exc:
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # kfp.local colours task names
        task = re.search(r"Inner task failed: (.*)\.$", message)
        # "'register' inside 'condition-2' inside ...": the innermost task is the one
        where = f"task {task.group(1).split(' inside ')[0]}" if task else pipeline.name
        log_name = getattr(log, "name", None)
        detail = tee.error or (f"see {log_name}" if isinstance(log_name, str) else message)
        raise OptimusError(f"{where} failed: {detail}") from None
    finally:
        tee.clear()  # no live line left under the summary or the error


def _check_local_inputs(args: dict[str, Any]) -> None:
    """A local path in the data settings must exist before anything runs (on a cluster
    the same setting names a file in the task's pod, so only the local runner checks)."""
    from optimus_lib.errors import OptimusError

    data = args.get("data_settings") or {}
    for key in ("train_uri", "eval_toxic_uri", "eval_benign_uri"):
        uri = str(data.get(key) or "")
        if uri and not uri.startswith(("gs://", "hf:")):
            path = Path(uri.removeprefix("file://")).expanduser()
            if not path.is_file():
                raise OptimusError(f"data.{key}: {uri}: no such file")


def git_sha(where: Path | None = None) -> str:
    """The commit of the git checkout the code runs from; empty outside one (or without
    git). Recorded in a registered model's lineage."""
    import subprocess

    here = where or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def run_local(
    arguments: dict[str, Any], pipeline_root: Path, log: TextIO | None = None
) -> dict[str, Any]:
    """Run the defense pipeline locally; return what a summary needs.

    ``arguments``: pipeline parameters (see ``defense_pipeline``); ``None`` values are
    left out (the parameter's default applies) and ``cache_dir`` defaults to empty (the
    local cache, not the cluster's PVC mount). ``log``: where the tasks' own output goes
    (default: stdout); kfp.local's progress lines ("Executing task ...") go to stdout
    either way.

    Returns ``{"run_dir", "evaluation", "report", "passed", "reasons", "registered",
    "rejection"}``: paths of evaluate's results JSON and HTML report, the gate verdict,
    ``{"uri", "version", "name"}`` of the registered model or None, the folder of the
    recorded rejection (its gs:// URI on a bucket) or None.

    Raises ``OptimusError`` (one line) for an unknown parameter or a failed task: the
    failing task's own one-line error when it printed one.
    """
    if arguments.get("train_backend", "local") != "local":
        from optimus_lib.errors import OptimusError

        raise OptimusError(
            f"train_backend {arguments['train_backend']!r} needs a cluster (optimus submit); "
            "a local run trains in its own processes (resources.train_processes)"
        )
    run = _run_pipeline(build_defense_pipeline(cluster=False), arguments, pipeline_root, log)
    evaluation = Path(run.outputs["evaluation"].path)
    run_dir = evaluation.parents[1]  # <pipeline_root>/<pipeline>-<time>/evaluate/evaluation
    gate = (_read_json(evaluation) or {}).get("gate", {})
    rejection = output_metadata(run_dir, "record-rejection", "rejection")
    return {
        "run_dir": run_dir,
        "evaluation": evaluation,
        "report": Path(run.outputs["report"].path),
        "passed": bool(gate.get("passed")),
        "reasons": list(gate.get("reasons", [])),
        "registered": output_metadata(run_dir, "register", "registered"),
        "rejection": _where(rejection["path"]) if rejection else None,
    }


@contextlib.contextmanager
def _task_log(path: Path, verbose: bool) -> Iterator[TextIO | None]:
    """Where the tasks' own output goes: ``path`` (made with its folder), or the terminal
    (None) when ``verbose``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if verbose:
        yield None
        return
    with path.open("w", encoding="utf-8") as log:
        yield log


def _arguments(cfg: Any) -> dict[str, Any]:
    """``cfg.pipeline_arguments()`` with a local registry folder made absolute (tasks may
    run in another working directory)."""
    args = cfg.pipeline_arguments()
    reg = dict(args.get("register_settings") or {})
    if reg.get("uri") and "://" not in reg["uri"]:
        args["register_settings"] = {**reg, "uri": str(Path(reg["uri"]).resolve())}
    return args


def _where(path: str) -> Path | str:
    """A local folder as a Path; a remote registry's URI (gs://...) as it is."""
    return path if "://" in path else Path(path)


def output_metadata(run_dir: Path, task: str, output: str) -> dict[str, Any] | None:
    """Metadata of a task's output artifact in a local run; None when the task did not
    run (a branch not taken)."""
    out = _read_json(Path(run_dir) / task / "executor_output.json") or {}
    arts = out.get("artifacts", {}).get(output, {}).get("artifacts", [])
    return dict(arts[0].get("metadata", {})) if arts else None


def run_defense(cfg: Any, run_dir: Path, verbose: bool = False) -> dict[str, Any]:
    """``optimus run``: run the defense pipeline for validated settings and summarise it.

    ``cfg``: anything with ``pipeline_arguments() -> dict`` (optimus_lib.config's
    PipelineSettings). Writes into ``run_dir``: ``kfp/`` (the kfp.local pipeline root),
    ``tasks.log`` (the tasks' own output; stdout instead when ``verbose``),
    ``report.html`` (evaluate's report) and ``summary.json`` (returned too: metrics,
    base_metrics, gate, registered, rejection and the paths above).
    """
    import shutil

    from optimus_lib.data.io import atomic_path, write_json

    run_dir, log_path = Path(run_dir), Path(run_dir) / "tasks.log"
    with _task_log(log_path, verbose) as log:
        result = run_local(_arguments(cfg), run_dir / "kfp", log=log)
    evaluation = _read_json(result["evaluation"]) or {}
    report = run_dir / "report.html"
    with atomic_path(report) as tmp:
        shutil.copyfile(result["report"], tmp)
    summary = {
        "metrics": evaluation.get("metrics"),
        "base_metrics": evaluation.get("base_metrics"),
        "gate": evaluation.get("gate", {"passed": result["passed"], "reasons": result["reasons"]}),
        "registered": result["registered"],
        "rejection": str(result["rejection"]) if result["rejection"] else None,
        "pipeline_run": str(result["run_dir"]),
        "evaluation": str(result["evaluation"]),
        "report": str(report),
        "tasks_log": None if verbose else str(log_path),
    }
    write_json(run_dir / "summary.json", summary)
    return summary


def run_experiment(exp: Any, run_dir: Path, verbose: bool = False) -> dict[str, Any]:
    """``optimus experiment``: run the experiment pipeline locally and summarise it.

    ``exp``: anything with ``pipeline_arguments() -> dict`` (optimus_lib.experiment's
    ExperimentConfig). Writes into ``run_dir``: ``kfp/`` (the kfp.local pipeline root),
    ``tasks.log`` (stdout instead when ``verbose``), ``report.html`` and ``results.json``
    / ``results.csv`` (compare_arms' comparison) and ``summary.json`` (returned too):
    ``arms`` (the first seed's rows at the first recall, by method: metrics and
    intervals), ``summary`` (means over seeds), ``pooled`` (paired differences pooled over
    seeds), ``promotion``, ``registered``,
    ``rejection`` and the paths.
    """
    import shutil

    from optimus_lib.data.io import atomic_path, write_json

    run_dir, log_path = Path(run_dir), Path(run_dir) / "tasks.log"
    with _task_log(log_path, verbose) as log:
        pipeline = build_experiment_pipeline(cluster=False)
        run = _run_pipeline(pipeline, _arguments(exp), run_dir / "kfp", log)
    results_dir = Path(run.outputs["results"].path)
    pipeline_run = results_dir.parents[1]  # <root>/<pipeline>-<time>/compare-arms/results
    for name in ("results.json", "results.csv"):
        with atomic_path(run_dir / name) as tmp:
            shutil.copyfile(results_dir / name, tmp)
    with atomic_path(run_dir / "report.html") as tmp:
        shutil.copyfile(run.outputs["report"].path, tmp)
    results = _read_json(results_dir / "results.json") or {}
    rows = results.get("rows", [])
    head = rows[0] if rows else {}
    first = [
        r
        for r in rows
        if r["seed"] == head.get("seed") and r["recall_target"] == head.get("recall_target")
    ]
    rejection = output_metadata(pipeline_run, "record-rejection", "rejection")
    summary = {
        "name": results.get("name"),
        "arms": {r["method"]: r for r in first},
        "summary": results.get("summary"),
        "pooled": results.get("pooled"),
        "promotion": results.get("promotion"),
        "registered": output_metadata(pipeline_run, "register", "registered"),
        "rejection": str(_where(rejection["path"])) if rejection else None,
        "pipeline_run": str(pipeline_run),
        "results": str(run_dir / "results.json"),
        "report": str(run_dir / "report.html"),
        "tasks_log": None if verbose else str(log_path),
    }
    write_json(run_dir / "summary.json", summary)
    return summary
