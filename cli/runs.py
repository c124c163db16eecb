"""The pipeline commands: run and experiment (kfp.local on this machine), submit (a
Kubeflow Pipelines cluster). The settings are read and validated here, before any task
starts; the runners live in :mod:`deploy`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from cli.common import SetOpt, apply_sets, out, print_table, run_settings

app = typer.Typer()

OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Run folder. Default: runs/<name in the file>."),
]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="Tasks' output to the terminal, not tasks.log.")
]


@app.command()
def run(
    settings: Annotated[Path, typer.Argument(help="Pipeline settings YAML (see examples/).")],
    output: OutputOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run the whole defense pipeline under the KFP local runner.

    prepare_data -> classify -> heal -> dpo_train -> evaluate -> register (only when the
    gates pass; else the rejection is recorded). Writes summary.json and report.html
    into the run folder.
    """
    from deploy.local import run_defense
    from optimus_lib.report.html import results_table

    cfg = run_settings(settings, set_)
    run_dir = output or Path("runs") / cfg.name
    summary = run_defense(cfg, run_dir, verbose=verbose)
    methods = {"base model": summary["base_metrics"], cfg.method: summary["metrics"]}
    if summary["base_metrics"] is None:
        methods.pop("base model")
    print_table(results_table(methods), f"Optimus ({run_dir})")
    _verdict("gate", summary["gate"], summary)
    out.print(f"-> {run_dir / 'summary.json'}, {run_dir / 'report.html'}")


@app.command()
def experiment(
    config: Annotated[
        Path,
        typer.Argument(
            help="Experiment YAML: base settings, methods, recalls, seeds "
            "(see examples/benchmark.yaml, examples/quickstart.yaml)."
        ),
    ],
    output: OutputOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run the experiment pipeline (methods x detector recall x seeds) under kfp.local.

    One classify and one heal per seed; every arm trains and is evaluated on the same
    data; the comparison (results.json/csv, report.html) has bootstrap intervals and the
    paired difference to no_defense. With ``promote`` in the file, that method is
    registered only when it beats no_defense.
    """
    from deploy.local import run_experiment
    from optimus_lib.experiment.compare import arm_table, print_summary
    from optimus_lib.experiment.config import parse_experiment
    from optimus_lib.experiment.pooled import pooled_table
    from optimus_lib.settings import load_yaml

    exp = parse_experiment(apply_sets(load_yaml(config), set_), str(config))
    root = output or Path("runs") / exp.name
    summary = run_experiment(exp, root, verbose=verbose)
    arms = list(summary["arms"].values())
    if arms:
        head = arms[0]
        title = f"seed {head['seed']}, detector recall target {head['recall_target']:g}"
        print_table(arm_table(arms), f"Optimus experiment: {title}")
    if len(exp.seeds) > 1 or len(exp.recalls) > 1:
        print_table(print_summary(summary["summary"]), "Mean over seeds")
    pooled = pooled_table(summary.get("pooled") or [])
    if pooled:
        print_table(pooled, "Toxic RTR, paired difference pooled over seeds")
    promo = summary.get("promotion")
    if promo:
        _verdict(f"promotion of {promo.get('method')}", promo, summary)
    out.print(f"-> {root / 'summary.json'}, {root / 'report.html'}, {root / 'results.csv'}")


def _verdict(what: str, verdict: dict, summary: dict) -> None:
    """The gate's (or the promotion's) verdict and what was registered, one line each."""
    said = "passed" if verdict["passed"] else "failed: " + "; ".join(verdict["reasons"])
    out.print(f"{what} {said}")
    reg = summary.get("registered")
    out.print(f"registered {reg['uri']} ({reg['version']})" if reg else "nothing registered")


@app.command()
def submit(
    settings: Annotated[
        Path,
        typer.Argument(help="Pipeline settings YAML (see examples/cluster.yaml)."),
    ],
    host: Annotated[
        str,
        typer.Option(
            "--host",
            envvar="KFP_HOST",
            help="Kubeflow Pipelines API, e.g. http://localhost:8080 (kubectl port-forward).",
        ),
    ] = "",
    pipeline_root: Annotated[
        str,
        typer.Option(
            help="gs://BUCKET/PREFIX for the run's artifacts (else pipeline_root in "
            "the settings file)."
        ),
    ] = "",
    namespace: Annotated[
        str,
        typer.Option(
            "--namespace",
            "-n",
            help="Namespace runs execute in: empty for standalone KFP (kubeflow), the profile "
            "namespace for multi-user KFP.",
        ),
    ] = "",
    experiment: Annotated[str, typer.Option(help="KFP experiment (created if new).")] = "optimus",
    run_name: Annotated[
        str, typer.Option(help="Run name. Default: the settings' name + time.")
    ] = "",
    pipeline: Annotated[
        Path | None,
        typer.Option(help="Compiled pipeline YAML. Default: pipelines/defense.yaml."),
    ] = None,
    compile_fresh: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="Compile the pipeline now (images from $OPTIMUS_REGISTRY / images.lock.json) "
            "instead of using the committed YAML.",
        ),
    ] = False,
    skip_check: Annotated[
        bool, typer.Option("--skip-check", help="Submit without `optimus cluster check`.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Validate and print the run request; contact nothing."),
    ] = False,
    set_: SetOpt = None,
) -> None:
    """Submit the defense pipeline to Kubeflow Pipelines with a settings file's parameters.

    Validates the settings, checks the parameters against the pipeline, needs a gs://
    pipeline root, runs the cluster check, then creates the run as the pipeline-runner
    service account.
    """
    from deploy.submit import submit as run_submit

    cfg = run_settings(settings, set_)
    res = run_submit(
        cfg.pipeline_arguments(),
        host=host,
        pipeline_root=pipeline_root or cfg.pipeline_root,
        namespace=namespace,
        experiment=experiment,
        run_name=run_name or f"{cfg.name} {time.strftime('%Y-%m-%d %H-%M-%S')}",
        pipeline=pipeline,
        compile_fresh=compile_fresh,
        check=not skip_check,
        dry_run=dry_run,
    )
    if not dry_run:
        print(
            f"submitted run {res['run_id']} ({res['run_name']}) in experiment "
            f"{res['experiment']}: {res['url']}"
        )
