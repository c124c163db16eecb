"""KFP component: an immutable, versioned model-registry entry for a model that passed."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Model, Output

from components.images import IMAGES


@dsl.component(base_image=IMAGES["light"], packages_to_install=[], install_kfp_package=False)
def register(
    adapter: Input[Model],
    evaluation: Input[Artifact],
    registered: Output[Artifact],
    model_card: Output[Markdown],
    settings: dict = {},  # noqa: B006 - KFP needs a literal default
    run_name: str = dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
    run_id: str = dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    task_id: str = dsl.PIPELINE_TASK_ID_PLACEHOLDER,
):
    """Registers the adapter as a new immutable version, with a model card and lineage.

    The entry (``<registry>/models/<name>/<version>/``) holds the adapter, the model card,
    evaluate's metrics and gate, the lineage (pipeline run, input artifact URIs and
    digests, library version) and a manifest of sha256 digests written last. An existing
    version is never overwritten: registering it again fails the task. Refuses a model
    whose evaluation did not pass.

    Args:
        adapter: The PEFT adapter from dpo_train (its metadata goes into the lineage).
        evaluation: Evaluate's results JSON.
        registered: A JSON record of the entry; metadata ``uri``, ``version``, ``name``.
        model_card: The entry's Markdown model card.
        settings: ``RegisterSettings``: ``uri`` (a local folder, ``file://``,
            ``gs://bucket/prefix`` with application default credentials, or
            ``kubeflow-registry://HOST?storage=...``; default runs/registry), ``name``
            (letters, digits, '.', '_', '-'; default optimus-chat), ``version`` (empty:
            the next free v<N>); a bad value fails the task with one line naming the
            field.
        run_name: Pipeline run name (filled in by KFP; lineage).
        run_id: Pipeline run id (filled in by KFP; lineage).
        task_id: This task's id (filled in by KFP; lineage).
    """
    import json
    from pathlib import Path

    from optimus_lib.settings import load_settings
    from optimus_lib.stages import one_line_errors
    from optimus_lib.stages.register import RegisterSettings
    from optimus_lib.stages.register import register as run_stage

    lineage = {
        "pipeline_run": {"name": run_name, "id": run_id, "task_id": task_id},
        "inputs": {"adapter": adapter.uri, "evaluation": evaluation.uri},
        "train": {k: v for k, v in adapter.metadata.items() if k not in ("detector", "source")},
        "detector": dict(adapter.metadata.get("detector") or {}),
        "source": adapter.metadata.get("source", ""),
    }
    with one_line_errors():
        s = load_settings(RegisterSettings, settings)
        result = run_stage(s, Path(adapter.path), Path(evaluation.path), lineage)
    entry = {"uri": result.uri, "version": result.version, "name": s.name}
    Path(registered.path).write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")
    registered.metadata.update(entry)
    Path(model_card.path).write_text(result.card, encoding="utf-8")
    print(f"register: {s.name} {result.version} -> {result.uri}")
