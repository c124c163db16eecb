"""``optimus submit`` / ``make submit``: run the defense pipeline on Kubeflow Pipelines.

The settings file gives the run's parameters (``PipelineSettings.pipeline_arguments()``),
checked here against the compiled pipeline's parameters (unknown, missing or mistyped:
one line) before anything is sent. The pipeline root must be a ``gs://`` URI: on a
cluster every task reads and writes its artifacts there through Workload Identity. The
run is created with ``kfp.Client.create_run_from_pipeline_package`` from the committed
``pipelines/defense.yaml`` (or a fresh compile), as the ``pipeline-runner`` service
account, after ``optimus cluster check`` passed for the namespace (skippable).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import logging
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deploy.cluster import SERVICE_ACCOUNT
from deploy.pipeline_spec import DEFAULT_PIPELINE, load_pipeline, parameter_specs

# gs://BUCKET[/PREFIX]: bucket names are 3-63 characters of lower-case letters, digits,
# '-', '_' and '.' (dotted names up to 222), starting and ending with a letter or digit.
GS_URI = re.compile(r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/[^\s]*)?$")
STANDALONE_NAMESPACE = "kubeflow"  # where standalone KFP runs every pipeline

_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "STRING": ("a string", lambda v: isinstance(v, str)),
    "NUMBER_INTEGER": (
        "an integer",
        lambda v: (
            isinstance(v, int)
            and not isinstance(v, bool)
            or isinstance(v, float)
            and v.is_integer()
        ),
    ),
    "NUMBER_DOUBLE": (
        "a number",
        lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    ),
    "BOOLEAN": ("true or false", lambda v: isinstance(v, bool)),
    "STRUCT": ("a mapping", lambda v: isinstance(v, dict)),
    "LIST": ("a list", lambda v: isinstance(v, list)),
}


def check_pipeline_root(uri: str) -> str:
    """``uri`` when it is a gs:// URI; else one OptimusError line."""
    from optimus_lib.errors import OptimusError

    if not uri:
        raise OptimusError(
            "pipeline root: give --pipeline-root gs://BUCKET/PREFIX (or pipeline_root in the "
            "settings file); a cluster run keeps its artifacts in a bucket"
        )
    if not GS_URI.match(uri):
        raise OptimusError(
            f"pipeline root {uri!r}: a cluster run needs a gs://BUCKET[/PREFIX] URI "
            "(tasks read and write artifacts there through Workload Identity)"
        )
    return uri.rstrip("/")


def check_arguments(spec: dict[str, Any], arguments: dict[str, Any], pipeline: Path) -> dict:
    """``arguments`` against the pipeline's parameters: unknown names, parameters without
    a default that nobody set, values of the wrong type; the first problem is one
    OptimusError line. Returns the arguments without ``None`` values."""
    from optimus_lib.errors import OptimusError

    specs = parameter_specs(spec)
    args = {k: v for k, v in arguments.items() if v is not None}
    unknown = sorted(set(args) - set(specs))
    if unknown:
        raise OptimusError(
            f"unknown pipeline parameter(s) {', '.join(unknown)} for {pipeline} "
            f"(known: {', '.join(sorted(specs))})"
        )
    missing = sorted(
        n
        for n, p in specs.items()
        if n not in args and "defaultValue" not in p and not p.get("isOptional")
    )
    if missing:
        raise OptimusError(
            f"missing pipeline parameter(s) {', '.join(missing)}: {pipeline} has no default "
            "and the settings file does not set them"
        )
    for name, value in sorted(args.items()):
        kind = specs[name].get("parameterType", "")
        what, ok = _TYPES.get(kind, ("", lambda v: True))
        if not ok(value):
            raise OptimusError(
                f"pipeline parameter {name}: expected {what}, got {json.dumps(value)}"
            )
    return args


def _compile(out_dir: Path) -> Path:
    from kfp import compiler

    from pipelines.defense import defense_pipeline

    path = out_dir / "defense.yaml"
    compiler.Compiler().compile(defense_pipeline, str(path))
    return path


def run_request(
    pipeline: Path,
    arguments: dict[str, Any],
    pipeline_root: str,
    run_name: str,
    experiment: str,
    namespace: str,
) -> dict[str, Any]:
    """What ``--dry-run`` prints: the run request kfp.Client would send (the pipeline spec
    named by its file, name and sha256 instead of its 1,500 lines)."""
    spec, _ = load_pipeline(pipeline)
    return {
        "experiment": experiment,
        "namespace": namespace or None,
        "display_name": run_name,
        "service_account": SERVICE_ACCOUNT,
        "runtime_config": {"pipeline_root": pipeline_root, "parameters": arguments},
        "pipeline_spec": {
            "file": str(pipeline),
            "name": spec.get("pipelineInfo", {}).get("name"),
            "sha256": hashlib.sha256(pipeline.read_bytes()).hexdigest(),
        },
    }


def _kfp_error(exc: BaseException, host: str) -> str:
    """One line for anything kfp.Client raises while talking to the server."""
    body = getattr(exc, "body", None)
    if body is not None or type(exc).__name__ == "ApiException":
        try:
            msg = json.loads(body).get("message") or json.loads(body).get("error")
        except (TypeError, ValueError, AttributeError):
            msg = None
        status = getattr(exc, "status", "?")
        msg = msg or getattr(exc, "reason", "")
        return f"Kubeflow Pipelines at {host} answered HTTP {status}: {msg}"
    text = str(getattr(exc, "reason", None) or exc)
    m = re.search(r"\[Errno -?\d+\] ([^')\]]+)", text)
    detail = m.group(1).strip() if m else text.splitlines()[0] if text else type(exc).__name__
    return f"cannot reach Kubeflow Pipelines at {host}: {detail}"


@contextlib.contextmanager
def _quiet():
    """kfp.Client prints links and logs each failed health check with a traceback; the
    caller reports one line instead."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def submit(
    arguments: dict[str, Any],
    *,
    host: str = "",
    pipeline_root: str = "",
    namespace: str = "",
    experiment: str = "optimus",
    run_name: str = "",
    pipeline: str | Path | None = None,
    compile_fresh: bool = False,
    check: bool = True,
    dry_run: bool = False,
    echo: Callable[[str], Any] = print,
    kubeconfig: str | None = None,
) -> dict[str, Any]:
    """Validate, check the cluster, create the run; returns ``{"run_id", "url", ...}``
    (the request itself for a dry run).

    ``namespace``: the namespace runs execute in; empty: standalone KFP's ``kubeflow``
    (a multi-user KFP needs the profile namespace). Every user mistake, an unreachable
    host and a refused request raise one OptimusError line; failed cluster checks too,
    after their lines were echoed.
    """
    from optimus_lib.errors import OptimusError

    root = check_pipeline_root(pipeline_root)
    with tempfile.TemporaryDirectory() as tmp:
        path = _compile(Path(tmp)) if compile_fresh else Path(pipeline or DEFAULT_PIPELINE)
        spec, _ = load_pipeline(path)
        args = check_arguments(spec, arguments, path)
        name = (
            run_name
            or f"{spec['pipelineInfo']['name']} {datetime.datetime.now():%Y-%m-%d %H-%M-%S}"
        )
        if dry_run:
            request = run_request(path, args, root, name, experiment, namespace)
            echo(json.dumps(request, indent=2, sort_keys=True))
            return request
        if not host:
            raise OptimusError(
                "no Kubeflow Pipelines host: give --host (KFP_HOST=...), e.g. "
                "http://localhost:8080 after kubectl port-forward -n kubeflow "
                "svc/ml-pipeline-ui 8080:80"
            )
        if check:
            from deploy.cluster import check_cluster

            problems = check_cluster(
                namespace or STANDALONE_NAMESPACE, path, args, kubeconfig=kubeconfig, echo=echo
            )
            if problems:
                raise OptimusError(
                    f"cluster check: {problems} problem(s) above; fix them or submit with "
                    "--skip-check (SKIP_CHECK=1)"
                )
        return _create_run(path, args, root, name, experiment, namespace, host)


def _create_run(
    path: Path,
    args: dict[str, Any],
    root: str,
    name: str,
    experiment: str,
    namespace: str,
    host: str,
) -> dict[str, Any]:
    import kfp

    from optimus_lib.errors import OptimusError

    try:
        with _quiet():
            client = kfp.Client(host=host)
            multi_user = bool(client.get_kfp_healthz(sleep_duration=1).multi_user)
    except Exception as exc:
        raise OptimusError(_kfp_error(exc, host)) from None
    if multi_user and not namespace:
        raise OptimusError(
            f"Kubeflow Pipelines at {host} is multi-user: give --namespace (NAMESPACE=...), "
            "your profile namespace"
        )
    try:
        with _quiet():
            result = client.create_run_from_pipeline_package(
                str(path),
                arguments=args,
                run_name=name,
                experiment_name=experiment,
                namespace=namespace if multi_user else None,
                pipeline_root=root,
                service_account=SERVICE_ACCOUNT,
            )
    except Exception as exc:
        raise OptimusError(_kfp_error(exc, host)) from None
    run_id = result.run_id
    return {
        "run_id": run_id,
        "run_name": name,
        "experiment": experiment,
        "url": f"{host.rstrip('/')}/#/runs/details/{run_id}",
    }
