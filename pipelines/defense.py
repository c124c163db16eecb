"""The defense pipeline: prepare_data -> classify -> heal -> dpo_train -> evaluate ->
register (when evaluate's gates pass) or record_rejection (when they fail).

Kubernetes settings come from pipeline parameters through kfp-kubernetes, so one
compiled YAML serves every cluster: GPU stages (classify, heal, dpo_train, evaluate) get
the accelerator type and count, a node selector, tolerations, the model-cache PVC and an
optional Hugging Face token secret; every task gets CPU and memory requests and limits;
dpo_train is retried (it resumes from its checkpoints on the PVC); evaluate, register and
record_rejection run uncached (a verdict and a registry write must happen every run).

kfp.local ignores the Kubernetes settings, retries and caching, and cannot resolve a
``dsl.OneOf``; ``pipelines.local.run_local`` runs this pipeline there.
"""

from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Artifact

from components.classify.component import classify
from components.dpo_train.component import dpo_train
from components.evaluate.component import evaluate
from components.heal.component import heal
from components.prepare_data.component import prepare_data
from components.record_rejection.component import record_rejection
from components.register.component import register

PIPELINE_NAME = "optimus-defense"
# Where GPU tasks mount the cache PVC (converted models, Hugging Face downloads,
# training checkpoints). A mount path cannot be a runtime parameter; the ``cache_dir``
# parameter tells the components to use it (empty for runs without the PVC).
CACHE_MOUNT = "/optimus-cache"
# (cpu request, cpu limit, memory request, memory limit) per task.
RESOURCES = {
    "prepare_data": ("1", "2", "2G", "4G"),
    "classify": ("2", "4", "16G", "32G"),
    "heal": ("2", "4", "16G", "32G"),
    "dpo_train": ("4", "8", "32G", "64G"),
    "evaluate": ("2", "4", "16G", "32G"),
    "register": ("500m", "1", "1G", "2G"),
    "record_rejection": ("500m", "1", "1G", "2G"),
}
DEFAULT_NODE_SELECTOR = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
DEFAULT_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


class DefenseOutputs(NamedTuple):
    """What a run hands back (kfp.local gives their paths; a cluster shows them in the UI)."""

    evaluation: Artifact
    report: HTML


def _resources(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
    cpu_req, cpu_lim, mem_req, mem_lim = RESOURCES[name]
    return (
        task.set_cpu_request(cpu_req)
        .set_cpu_limit(cpu_lim)
        .set_memory_request(mem_req)
        .set_memory_limit(mem_lim)
    )


def _gpu(
    task: dsl.PipelineTask,
    accelerator_type,
    accelerator_count,
    node_selector,
    tolerations,
    cache_pvc,
    hf_token_secret,
) -> dsl.PipelineTask:
    task.set_accelerator_type(accelerator_type).set_accelerator_limit(accelerator_count)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    kubernetes.mount_pvc(task, pvc_name=cache_pvc, mount_path=CACHE_MOUNT)
    kubernetes.use_secret_as_env(
        task, secret_name=hf_token_secret, secret_key_to_env={"token": "HF_TOKEN"}, optional=True
    )
    return task


def register_task(adapter, evaluation, registry, name, version="") -> dsl.PipelineTask:
    """register, uncached (a registry write must happen every run), with KFP's run ids."""
    task = register(
        adapter=adapter,
        evaluation=evaluation,
        registry=registry,
        name=name,
        version=version,
        run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        task_id=dsl.PIPELINE_TASK_ID_PLACEHOLDER,
    )
    return _resources(task, "register").set_caching_options(False)


def rejection_task(evaluation, registry, name) -> dsl.PipelineTask:
    """record_rejection, uncached, with KFP's run ids (the branch that does not register)."""
    task = record_rejection(
        evaluation=evaluation,
        registry=registry,
        name=name,
        run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        task_id=dsl.PIPELINE_TASK_ID_PLACEHOLDER,
    )
    return _resources(task, "record_rejection").set_caching_options(False)


@dsl.pipeline(name=PIPELINE_NAME)
def defense_pipeline(
    model: str = "smollm2-135m-instruct",
    revision: str = "",
    judge_model: str = "smollm2-135m-instruct",
    seed: int = 0,
    detector: str = "auto",
    rescore_detector: str = "",
    method: str = "optimus",
    train_uri: str = "",
    target_recall: float = 0.0,
    registry: str = "",
    model_name: str = "optimus-chat",
    model_version: str = "",
    data_settings: dict = {},  # noqa: B006 - KFP needs literal defaults
    classify_settings: dict = {},  # noqa: B006
    heal_settings: dict = {},  # noqa: B006
    train_settings: dict = {},  # noqa: B006
    evaluate_settings: dict = {},  # noqa: B006
    accelerator_type: str = "nvidia.com/gpu",
    accelerator_count: int = 1,
    gpu_node_selector: dict = DEFAULT_NODE_SELECTOR,
    gpu_tolerations: list = DEFAULT_TOLERATIONS,
    cache_pvc: str = "optimus-cache",
    cache_dir: str = CACHE_MOUNT,
    hf_token_secret: str = "hf-token",
) -> DefenseOutputs:
    """Fine-tunes a chat model on untrusted dialogs without learning their toxicity.

    Classify flags toxic replies, heal rewrites them in context, dpo_train fine-tunes a
    LoRA adapter (SFT on kept + healed dialogs, then DPO with healed over flagged
    replies), evaluate measures toxicity and utility against gates, and the adapter is
    registered only when every gate holds; otherwise the rejection is recorded.

    Args:
        model: The chat model to fine-tune (bundled name, folder or hub id).
        revision: Hub revision (commit sha or tag) of ``model``; empty for local models.
        judge_model: The aligned model that judges (llm-judge) and writes healed replies;
            a hub id carries its pin inline: ``org/name@<commit sha>``.
        seed: One seed for data sampling, healing, training and evaluation.
        detector: Classify's detector, also heal's re-score detector unless
            ``rescore_detector`` names another.
        rescore_detector: Heal's re-score detector; empty: ``detector`` (must be set when
            ``detector`` reads labels, e.g. the oracle of a robustness simulation).
        method: Training recipe: optimus, no_dpo, fixed_heal (with heal_settings mode
            fixed) or filter. (no_defense and star_dss train on the original replies; the
            experiment runs them.)
        train_uri: Training JSONL (path, gs:// or hf:NAME); empty: the bundled benchmark.
        target_recall: Weaken the detector to this recall (robustness experiments); 0: off.
        registry: Model registry location; empty: the register stage's default.
        model_name: Name of the registered model.
        model_version: Version to register; empty: the next free v<N>.
        data_settings: Other DataSettings fields.
        classify_settings: Other ClassifySettings fields.
        heal_settings: Other HealSettings fields.
        train_settings: Other TrainSettings fields (sft, dpo hyperparameters, ...).
        evaluate_settings: Other EvaluateSettings fields (gates, ...).
        accelerator_type: Accelerator resource of the GPU tasks.
        accelerator_count: Accelerators per GPU task.
        gpu_node_selector: Node selector of the GPU tasks (node pool labels).
        gpu_tolerations: Tolerations of the GPU tasks (node pool taints).
        cache_pvc: PVC mounted at /optimus-cache in the GPU tasks (model cache and
            training checkpoints, so a retried dpo_train resumes).
        cache_dir: Cache folder the GPU tasks use; empty: the image default (local runs).
        hf_token_secret: Secret whose ``token`` key becomes HF_TOKEN (optional).

    Returns:
        evaluate's results JSON and HTML report.
    """
    gpu = dict(
        accelerator_type=accelerator_type,
        accelerator_count=accelerator_count,
        node_selector=gpu_node_selector,
        tolerations=gpu_tolerations,
        cache_pvc=cache_pvc,
        hf_token_secret=hf_token_secret,
    )
    data = prepare_data(train_uri=train_uri, seed=seed, settings=data_settings)
    _resources(data, "prepare_data")

    scan = classify(
        dialogs=data.outputs["train"],
        detector=detector,
        model=judge_model,
        target_recall=target_recall,
        cache_dir=cache_dir,
        settings=classify_settings,
    )
    _gpu(_resources(scan, "classify"), **gpu)

    healed = heal(
        scored=scan.outputs["scored"],
        threshold=scan.outputs["Output"],
        rescore_detector=rescore_detector,
        detector=detector,
        model=judge_model,
        seed=seed,
        cache_dir=cache_dir,
        settings=heal_settings,
    )
    _gpu(_resources(healed, "heal"), **gpu)

    trained = dpo_train(
        sft_data=healed.outputs["sft_data"],
        preferences=healed.outputs["preferences"],
        method=method,
        model=model,
        revision=revision,
        seed=seed,
        cache_dir=cache_dir,
        settings=train_settings,
    )
    _gpu(_resources(trained, "dpo_train"), **gpu)
    trained.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0)

    verdict = evaluate(
        adapter=trained.outputs["adapter"],
        eval_toxic=data.outputs["eval_toxic"],
        eval_benign=data.outputs["eval_benign"],
        model=model,
        revision=revision,
        seed=seed,
        cache_dir=cache_dir,
        settings=evaluate_settings,
    )
    _gpu(_resources(verdict, "evaluate"), **gpu)
    verdict.set_caching_options(False)

    # evaluate has artifact outputs, so its bool is the named output "Output"; kfp.local
    # (2.17) skips a lone dsl.If on a named output, so the Else branch is always present.
    with dsl.If(verdict.outputs["Output"] == True, name="gates-passed"):  # noqa: E712
        register_task(
            trained.outputs["adapter"],
            verdict.outputs["evaluation"],
            registry,
            model_name,
            model_version,
        )
    with dsl.Else(name="gates-failed"):
        rejection_task(verdict.outputs["evaluation"], registry, model_name)

    return DefenseOutputs(
        evaluation=verdict.outputs["evaluation"], report=verdict.outputs["report"]
    )
