"""The defense pipeline: prepare_data -> classify -> heal -> dpo_train -> evaluate ->
register (when evaluate's gates pass) or record_rejection (when they fail).

Every stage gets its settings resolved by the client (``optimus run`` / ``optimus
submit`` read one settings file: ``PipelineSettings.pipeline_arguments()``), so a value
two stages share is already in both stages' settings. Kubernetes placement comes from
pipeline parameters (:mod:`pipelines.shared`): GPU stages get the accelerator, node
selector, tolerations, the model-cache PVC and an optional Hugging Face token secret;
every task gets CPU and memory; dpo_train is retried (it resumes from its checkpoints);
evaluate, register and record_rejection run uncached (a verdict and a registry write
must happen every run).

kfp.local cannot resolve a ``dsl.OneOf``, so the pipeline returns evaluate's outputs and
the local runner reads register's or record_rejection's output from the run folder.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact

from components.evaluate.component import evaluate
from pipelines.shared import (
    CACHE_MOUNT,
    DEFAULT_NODE_SELECTOR,
    DEFAULT_TOLERATIONS,
    Placement,
    build_curation,
    curate,
    register_task,
    rejection_task,
    training,
)

PIPELINE_NAME = "optimus-defense"


class DefenseOutputs(NamedTuple):
    """What a run hands back (kfp.local gives their paths; a cluster shows them in the UI)."""

    evaluation: Artifact
    report: HTML


def build_defense_pipeline(cluster: bool = True):
    """The defense pipeline; ``cluster=False`` leaves out the Kubernetes settings and the
    retries (:mod:`pipelines.shared`), for kfp.local. The compiled YAML has them."""

    curation = build_curation(cluster)

    @dsl.pipeline(name=PIPELINE_NAME)
    def defense_pipeline(
        data_settings: dict = {},  # noqa: B006 - KFP needs literal defaults
        classify_settings: dict = {},  # noqa: B006
        heal_settings: dict = {},  # noqa: B006
        train_settings: dict = {},  # noqa: B006
        evaluate_settings: dict = {},  # noqa: B006
        register_settings: dict = {},  # noqa: B006
        accelerator_type: str = "nvidia.com/gpu",
        accelerator_count: int = 1,
        train_accelerator_count: int = 1,
        train_processes: int = 0,
        train_backend: str = "local",
        trainjob_settings: dict = {},  # noqa: B006
        gpu_node_selector: dict = DEFAULT_NODE_SELECTOR,
        gpu_tolerations: list = DEFAULT_TOLERATIONS,
        cache_pvc: str = "optimus-cache",
        cache_dir: str = CACHE_MOUNT,
        hf_token_secret: str = "hf-token",
        shards: int = 1,
    ) -> DefenseOutputs:
        """Fine-tunes a chat model on untrusted dialogs without learning their toxicity.

        Classify flags toxic replies, heal rewrites them in context, dpo_train fine-tunes
        a LoRA adapter (SFT on kept + healed dialogs, then DPO with healed over flagged
        replies), evaluate measures toxicity and utility against gates, and the adapter is
        registered only when every gate holds; otherwise the rejection is recorded.

        Args:
            data_settings: DataSettings (training data URI, benchmark size, seed, ...).
            classify_settings: ClassifySettings (detector, judge model, threshold, ...).
            heal_settings: HealSettings (healer model, re-score detector, sampling, ...).
            train_settings: TrainSettings (method, base model, SFT and DPO, ...).
            evaluate_settings: EvaluateSettings (base model, evaluator, gates, ...).
            register_settings: RegisterSettings (registry URI, model name, version).
            accelerator_type: Accelerator resource of the GPU tasks.
            accelerator_count: Accelerators per inference task (classify, heal, evaluate).
            train_accelerator_count: Accelerators of the training task (dpo_train).
            train_processes: Training processes in dpo_train (0: one per accelerator).
            train_backend: ``local`` (dpo_train in its pod) or ``trainjob`` (a Kubeflow
                Trainer TrainJob over many nodes, started by a light train_job task).
            trainjob_settings: TrainJobSettings of the ``trainjob`` backend (nodes,
                accelerators per node, node selector, tolerations, runtime, ...).
            gpu_node_selector: Node selector of the GPU tasks (node pool labels).
            gpu_tolerations: Tolerations of the GPU tasks (node pool taints).
            cache_pvc: PVC mounted at /optimus-cache in the GPU tasks (model cache and
                training checkpoints, so a retried dpo_train resumes).
            cache_dir: Cache folder the GPU tasks use; empty: the image default.
            hf_token_secret: Secret whose ``token`` key becomes HF_TOKEN (optional).
            shards: Shards classify and heal each run in (one pod per shard on a
                cluster); their merged outputs equal an unsharded run's.

        Returns:
            evaluate's results JSON and HTML report.
        """
        where = Placement.of(locals(), cluster)
        curated = curate(curation, where, data_settings, classify_settings, heal_settings, shards)
        adapter = training(
            where,
            train_backend,
            trainjob_settings,
            train_processes,
            sft_data=curated.outputs["sft_data"],
            preferences=curated.outputs["preferences"],
            settings=train_settings,
            cache_dir=cache_dir,
        )
        verdict = evaluate(
            adapter=adapter,
            eval_toxic=curated.outputs["eval_toxic"],
            eval_benign=curated.outputs["eval_benign"],
            settings=evaluate_settings,
            cache_dir=cache_dir,
        )
        where.gpu(verdict, "inference").set_caching_options(False)

        # evaluate has artifact outputs, so its bool is the named output "Output";
        # kfp.local (2.17) skips a lone dsl.If on a named output, so Else is always there.
        with dsl.If(verdict.outputs["Output"] == True, name="gates-passed"):  # noqa: E712
            register_task(
                where,
                adapter,
                verdict.outputs["evaluation"],
                register_settings,
            )
        with dsl.Else(name="gates-failed"):
            rejection_task(where, verdict.outputs["evaluation"], register_settings)

        return DefenseOutputs(
            evaluation=verdict.outputs["evaluation"], report=verdict.outputs["report"]
        )

    return defense_pipeline


defense_pipeline = build_defense_pipeline()
