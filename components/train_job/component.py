"""KFP component: the training stage as a Kubeflow Trainer TrainJob (a light controller)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import IMAGES


@dsl.component(base_image=IMAGES["light"], packages_to_install=[], install_kfp_package=False)
def train_job(
    sft_data: Input[Dataset],
    preferences: Input[Dataset],
    adapter: Output[Model],
    metrics: Output[Metrics],
    settings: dict = {},  # noqa: B006 - KFP needs a literal default
    trainjob: dict = {},  # noqa: B006
    seed: int = -1,
    method: str = "",
    image: str = IMAGES["torch"],
):
    """Runs dpo_train's training on Kubeflow Trainer: one TrainJob over many nodes.

    This task trains nothing itself (the light image, no accelerator): it copies its
    inputs to the shared volume, creates a TrainJob with the Kubeflow SDK that runs the
    training stage's own entry point under torchrun on every node (the torch image, the
    GPUs of each node), streams the job's logs here, waits for it and hands on the
    adapter rank 0 wrote as this task's output. The job is named by the content key of
    the run, so a retried task reattaches to its job or, after a failure, starts one that
    resumes from the checkpoints on the volume. A failed or deleted TrainJob fails the
    task with one line: the failing rank's reason and the job's last log lines.

    Args:
        sft_data: Heal's SFT set (or classify's scored set for no_defense / star_dss).
        preferences: Heal's DPO pairs (read by optimus and fixed_heal only).
        adapter: The PEFT adapter folder; metadata as dpo_train's, plus the TrainJob's name.
        metrics: dpo_train's metrics, from rank 0 of the job.
        settings: ``TrainSettings`` (as dpo_train's); ``checkpoint_root`` is set to the
            shared volume.
        trainjob: ``TrainJobSettings``: ``namespace``, ``runtime`` (default
            torch-distributed), ``num_nodes``, ``accelerator_type``,
            ``accelerators_per_node``, ``cpu``, ``memory``, ``node_selector``,
            ``tolerations``, ``pvc`` and ``mount_path`` (the volume every node and this
            task mount), ``service_account``, ``env``, ``timeout_s``.
        seed: Set by a loop over arms (the experiment); -1: ``settings.seed``.
        method: Set by a loop over arms (the experiment); empty: ``settings.method``.
        image: The torch image the nodes run (default: the one this pipeline was compiled
            with).
    """
    from pathlib import Path

    from optimus_lib.settings import load_settings, loop_values
    from optimus_lib.stages import one_line_errors
    from optimus_lib.stages.train import TrainSettings
    from optimus_lib.stages.trainjob import TrainJobSettings, check_volume, run_trainjob

    with one_line_errors():
        s = load_settings(TrainSettings, settings, **loop_values(seed=seed, method=method))
        job = load_settings(TrainJobSettings, trainjob, image=trainjob.get("image") or image)
        check_volume(job)
        result = run_trainjob(
            s, job, Path(sft_data.path), Path(adapter.path), Path(preferences.path)
        )
    for key, value in result.as_metrics().items():
        metrics.log_metric(key, value)
    upstream = {k: sft_data.metadata[k] for k in ("detector", "source") if k in sft_data.metadata}
    adapter.metadata.update({**result.metadata, **upstream, "framework": "peft"})
