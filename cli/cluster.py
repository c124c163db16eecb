"""``optimus cluster check``: is a namespace ready for a run (docs/cluster.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.common import SetOpt, run_settings

app = typer.Typer(
    no_args_is_help=True,
    help="The Kubernetes cluster a defense run goes to (docs/cluster.md).",
)

PipelineOpt = Annotated[
    Path | None,
    typer.Option(help="Compiled pipeline YAML. Default: pipelines/defense.yaml."),
]


@app.command("check")
def cluster_check(
    namespace: Annotated[
        str,
        typer.Option(
            "--namespace",
            "-n",
            help="Namespace the runs execute in (standalone KFP: kubeflow; multi-user: the "
            "profile namespace).",
        ),
    ],
    settings: Annotated[
        Path | None,
        typer.Option(
            "--settings",
            "-s",
            help="Pipeline settings YAML: check with its GPU type, node selector, "
            "tolerations and PVC instead of the pipeline's defaults.",
        ),
    ] = None,
    pipeline: PipelineOpt = None,
    context: Annotated[
        str | None, typer.Option(help="kube context (default: the current one).")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Is the namespace ready for a run? One line per check; exit 1 on any problem.

    Namespace, the pipeline-runner service account and its Workload Identity annotation,
    the cache PVC bound, GPU nodes that the GPU tasks' node selector, tolerations and
    requests fit, images pinned by digest. Reads the current kube context (KUBECONFIG).
    """
    from deploy.cluster import check_cluster

    args = run_settings(settings, set_).pipeline_arguments() if settings or set_ else None
    problems = check_cluster(namespace, pipeline, args, context=context)
    if problems:
        print(f"optimus: {problems} problem(s)", file=sys.stderr)
        raise typer.Exit(1)
