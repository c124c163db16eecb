"""KFP component: record a model that failed evaluate's gates (the Else branch)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Output

from components.images import IMAGES


@dsl.component(base_image=IMAGES["light"], packages_to_install=[], install_kfp_package=False)
def record_rejection(
    evaluation: Input[Artifact],
    rejection: Output[Artifact],
    settings: dict = {},  # noqa: B006 - KFP needs a literal default
    run_name: str = dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
    run_id: str = dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    task_id: str = dsl.PIPELINE_TASK_ID_PLACEHOLDER,
):
    """Records why a model was not registered, for reviewers.

    Writes the failed gates, metrics and lineage under
    ``<registry>/rejected/<name>/<time>-<id>/rejection.json``; nothing is added to the
    model entries. The task succeeds: a rejected model is a result, not an error.

    Args:
        evaluation: Evaluate's results JSON.
        rejection: A copy of the rejection record; metadata ``uri``, ``path`` (the local
            folder, or the URI on a remote registry) and ``reasons``.
        settings: ``RegisterSettings``: ``uri`` (the registry, as for register) and
            ``name`` (the model the rejection is filed under); a bad value fails the task
            with one line naming the field.
        run_name: Pipeline run name (filled in by KFP; lineage).
        run_id: Pipeline run id (filled in by KFP; lineage).
        task_id: This task's id (filled in by KFP; lineage).
    """
    import json
    from pathlib import Path

    from optimus_lib.settings import load_settings
    from optimus_lib.stages import one_line_errors
    from optimus_lib.stages.register import RegisterSettings
    from optimus_lib.stages.register import record_rejection as run_stage

    lineage = {
        "pipeline_run": {"name": run_name, "id": run_id, "task_id": task_id},
        "inputs": {"evaluation": evaluation.uri},
    }
    with one_line_errors():
        s = load_settings(RegisterSettings, settings)
        result = run_stage(s, Path(evaluation.path), lineage)
    text = json.dumps(result.record, indent=2, sort_keys=True) + "\n"
    Path(rejection.path).write_text(text, encoding="utf-8")
    reasons = result.record["gate"].get("reasons") or []
    where = str(result.path) if result.path else result.uri
    rejection.metadata.update({"path": where, "uri": result.uri, "reasons": reasons})
    print(f"record_rejection: not registered ({'; '.join(reasons) or 'gates failed'})")
    print(f"record_rejection: recorded in {where}")
