"""The ``optimus`` command line: parse options, read settings, call one function below.

Command groups, one module each: the stages (:mod:`cli.stages`: classify, heal, train,
evaluate, poison), the pipelines (:mod:`cli.runs`: run, experiment, submit), the cluster
(:mod:`cli.cluster`) and the model registry (:mod:`cli.models`). The CLI sits above the
library, the pipelines and the runners in :mod:`deploy`; nothing below imports it. User
mistakes raise :class:`OptimusError` anywhere below; :func:`main` prints them as one
line and exits with code 2.
"""

from __future__ import annotations

import os
import sys

import typer

from cli import cluster, models, runs, stages
from optimus_lib.errors import OptimusError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Optimus: fine-tune a chat model on untrusted dialogs without learning toxicity.\n\n"
    "Stages: classify (flag toxic replies) -> heal (write safe replies) -> train "
    "(SFT + DPO) -> evaluate (gates) -> register. `optimus run SETTINGS.yaml` runs the whole "
    "KFP pipeline locally; every command takes --settings FILE and --set KEY=VALUE.",
)
for group in (stages.app, runs.app):
    for command in group.registered_commands:
        app.registered_commands.append(command)
app.add_typer(cluster.app, name="cluster")
app.add_typer(models.app, name="models")


def _quiet_libraries() -> None:
    """Library chatter (deprecation notices, per-map progress bars) hides our own output."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    # Env vars rather than imports: importing transformers here would slow `--help`.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main() -> None:
    """Console entry point: one-line errors, exit code 2, never a traceback for user input."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    _quiet_libraries()
    try:
        app()
    except OptimusError as exc:
        print(f"optimus: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("optimus: interrupted (training resumes from its checkpoint)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
