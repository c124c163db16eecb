"""What the defense and experiment pipelines share: where tasks run, the curation wiring
(prepare_data -> classify -> heal, each inference stage sharded) and the registry steps.

Resource profiles are named by the kind of work, not borrowed from another task's row:
``light`` (bookkeeping: registry writes, fan-in), ``data`` (reading and writing JSONL),
``inference`` (a model scores or generates: classify, heal, evaluate) and ``train``.
GPU placement (accelerator, node selector, tolerations, the model-cache PVC, the
optional Hugging Face token) comes from pipeline parameters through kfp-kubernetes, so
one compiled YAML serves every cluster.

A pipeline built with ``cluster=False`` (what the local runner runs) has none of the
Kubernetes settings and no retries: kfp.local (2.17) cannot resolve parameter-driven
Kubernetes settings inside a ParallelFor, ignores them elsewhere, and would retry a
task's user error after its back-off.
"""

# No ``from __future__ import annotations``: kfp reads the sub-pipeline's annotations as types.
from dataclasses import dataclass
from typing import Any, NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import Dataset, pipeline_channel

from components.classify.component import classify
from components.dpo_train.component import dpo_train
from components.heal.component import heal
from components.prepare_data.component import prepare_data
from components.record_rejection.component import record_rejection
from components.register.component import register
from components.shards.merge_healed.component import merge_healed
from components.shards.merge_scored.component import merge_scored
from components.shards.split.component import split
from components.train_job.component import train_job

# Where GPU tasks mount the cache PVC (converted models, Hugging Face downloads, training
# checkpoints). A mount path cannot be a runtime parameter; the ``cache_dir`` parameter
# tells the components to use it (empty for runs without the PVC).
CACHE_MOUNT = "/optimus-cache"
# (cpu request, cpu limit, memory request, memory limit) per kind of work.
PROFILES = {
    "light": ("500m", "1", "1G", "2G"),
    "data": ("1", "2", "2G", "4G"),
    "inference": ("2", "4", "16G", "32G"),
    "train": ("4", "8", "32G", "64G"),
}
DEFAULT_NODE_SELECTOR = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
DEFAULT_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
# dpo_train resumes from its checkpoints on the PVC, so a retry after a lost node or an
# out-of-memory kill continues where it stopped.
# KFP's ids of the run and the task, for the registry's lineage.
RUN_IDS = {
    "run_name": dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
    "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    "task_id": dsl.PIPELINE_TASK_ID_PLACEHOLDER,
}
TRAIN_RETRIES = {"num_retries": 2, "backoff_duration": "60s", "backoff_factor": 2.0}


@dataclass
class Placement:
    """Where a pipeline's tasks run: its placement parameters, and whether the pipeline
    is built for a cluster (Kubernetes settings and retries) or for kfp.local."""

    accelerator_type: Any
    accelerator_count: Any
    node_selector: Any
    tolerations: Any
    cache_pvc: Any
    hf_token_secret: Any
    cache_dir: Any
    cluster: bool = True
    # The training task's own accelerator count (all of its node's, say), apart from the
    # inference tasks' ``accelerator_count``; None: the same count.
    train_accelerator_count: Any = None

    @classmethod
    def of(cls, params: dict[str, Any], cluster: bool) -> "Placement":
        """The placement a pipeline function's parameters name, taken by name from its
        ``locals()`` (the pipeline functions declare them one by one: KFP reads the
        signature) so that no pipeline repeats the construction."""
        return cls(
            params["accelerator_type"],
            params["accelerator_count"],
            params["gpu_node_selector"],
            params["gpu_tolerations"],
            params["cache_pvc"],
            params["hf_token_secret"],
            params["cache_dir"],
            cluster,
            params.get("train_accelerator_count"),
        )

    def cpu(self, task: dsl.PipelineTask, profile: str) -> dsl.PipelineTask:
        """CPU and memory requests and limits of ``profile``."""
        cpu_req, cpu_lim, mem_req, mem_lim = PROFILES[profile]
        return (
            task.set_cpu_request(cpu_req)
            .set_cpu_limit(cpu_lim)
            .set_memory_request(mem_req)
            .set_memory_limit(mem_lim)
        )

    def gpu(self, task: dsl.PipelineTask, profile: str, count: Any = None) -> dsl.PipelineTask:
        """``profile``'s CPU and memory, and on a cluster the GPU node pool and the PVC;
        ``count`` accelerators (default: ``accelerator_count``)."""
        self.cpu(task, profile)
        if not self.cluster:
            return task
        task.set_accelerator_type(self.accelerator_type)
        limit = self.accelerator_count if count is None else count
        task.set_accelerator_limit(limit)
        # kfp 2.17 does not track the parameters these two read, so a loop (or sub-
        # pipeline) around the task would not receive them: register them by hand.
        task.register_pipeline_channels(
            [
                c
                for c in (self.accelerator_type, limit)
                if isinstance(c, pipeline_channel.PipelineChannel)
            ]
        )
        kubernetes.add_node_selector_json(task, self.node_selector)
        kubernetes.add_toleration_json(task, self.tolerations)
        kubernetes.mount_pvc(task, pvc_name=self.cache_pvc, mount_path=CACHE_MOUNT)
        kubernetes.use_secret_as_env(
            task,
            secret_name=self.hf_token_secret,
            secret_key_to_env={"token": "HF_TOKEN"},
            optional=True,
        )
        return task

    def train(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        """The training task: the ``train`` profile on the GPU pool with its own
        accelerator count, retried on a cluster."""
        self.gpu(task, "train", self.train_accelerator_count)
        if self.cluster:
            task.set_retry(**TRAIN_RETRIES)
        return task

    def controller(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        """The TrainJob controller: light, no accelerator, the cache PVC (it hands the
        job its inputs and takes the adapter from there), retried like training."""
        self.cpu(task, "light")
        if self.cluster:
            kubernetes.mount_pvc(task, pvc_name=self.cache_pvc, mount_path=CACHE_MOUNT)
            task.set_retry(**TRAIN_RETRIES)
        return task


def training(
    where: Placement,
    backend: Any,
    trainjob_settings: Any,
    processes: Any,
    **inputs: Any,
) -> Any:
    """The training step: dpo_train in its own pod (``backend`` ``local``, on
    ``train_accelerator_count`` accelerators with ``processes`` ranks), or on a cluster,
    when ``backend`` is ``trainjob``, a light train_job task that runs it as a Kubeflow
    Trainer TrainJob over many nodes. Returns the adapter output (one of the two).

    kfp.local cannot resolve a ``dsl.OneOf``, and a TrainJob needs a cluster: the local
    build has dpo_train only.
    """
    train_inputs = {k: v for k, v in inputs.items() if k != "cache_dir"}
    if not where.cluster:
        task = dpo_train(**inputs, processes=processes)
        where.train(task)
        return task.outputs["adapter"]
    with dsl.If(backend == "trainjob", name="train-on-trainjob"):
        job = train_job(**train_inputs, trainjob=trainjob_settings)
        where.controller(job)
    with dsl.Else(name="train-in-task"):
        # The placement parameters go in as inputs too: kfp 2.17 does not hand a branch the
        # parameters that only set_accelerator_* use (the task's YAML would name inputs
        # its branch does not have).
        task = dpo_train(
            **inputs,
            processes=processes,
            accelerators=where.train_accelerator_count,
            accelerator_type=where.accelerator_type,
        )
        where.train(task)
    return dsl.OneOf(job.outputs["adapter"], task.outputs["adapter"])


# How many shards of one stage run at once on a cluster. KFP takes a loop's parallelism
# at compile time only (kfp 2.17: an int in the IR, not a parameter); 0 leaves it to the
# ``shards`` parameter, one pod per shard. Recompile with another value to cap it.
SHARD_PARALLELISM = 0
# Under kfp.local one shard at a time: two torch tasks on a workstation's cores slow each
# other down several-fold.
LOCAL_PARALLELISM = 1


class CurationOutputs(NamedTuple):
    """What the curation sub-pipeline hands on."""

    train: Dataset
    eval_toxic: Dataset
    eval_benign: Dataset
    scored: Dataset
    sft_data: Dataset
    preferences: Dataset
    threshold: float


def build_curation(cluster: bool = True, parallelism: int | None = None):
    """The curation as one sub-pipeline: prepare_data -> split -> classify per shard ->
    merge_scored (one threshold for the whole dataset) -> split by flagged records ->
    heal per shard -> merge_healed. The defense pipeline calls it once and the experiment
    once per seed: the same wiring, and a sub-pipeline (not a loop nested in the seeds
    loop) because kfp.local 2.17 resolves an outer loop's values wrongly in an inner one.
    ``parallelism``: shards at once (default: all on a cluster, one under kfp.local)."""
    if parallelism is None:
        parallelism = SHARD_PARALLELISM if cluster else LOCAL_PARALLELISM

    @dsl.pipeline(name="curation")
    def curation(
        data_settings: dict,
        classify_settings: dict,
        heal_settings: dict,
        seed: int,
        shards: int,
        accelerator_type: str,
        accelerator_count: int,
        gpu_node_selector: dict,
        gpu_tolerations: list,
        cache_pvc: str,
        cache_dir: str,
        hf_token_secret: str,
    ) -> CurationOutputs:
        """prepare_data -> classify -> heal, each inference stage once per shard."""
        where = Placement.of(locals(), cluster)
        data = prepare_data(settings=data_settings, seed=seed)
        where.cpu(data, "data")
        parts = split(dataset=data.outputs["train"], count=shards)
        where.cpu(parts.set_display_name("split-dialogs"), "data")
        with dsl.ParallelFor(
            parts.outputs["Output"], parallelism=parallelism, name="classify-shards"
        ) as shard:
            scores = classify(
                dialogs=parts.outputs["shards"],
                shard=shard,
                settings=classify_settings,
                cache_dir=cache_dir,
            )
            where.gpu(scores, "inference")
        scan = merge_scored(
            parts=dsl.Collected(scores.outputs["scored"]),
            settings=classify_settings,
            cache_dir=cache_dir,
        )
        where.gpu(scan, "inference")
        flagged = split(
            dataset=scan.outputs["scored"],
            count=shards,
            balance="flagged",
            threshold=scan.outputs["Output"],
        )
        where.cpu(flagged.set_display_name("split-flagged"), "data")
        with dsl.ParallelFor(
            flagged.outputs["Output"], parallelism=parallelism, name="heal-shards"
        ) as shard:
            # the threshold travels with the shards: kfp.local 2.17 hands a task inside a
            # loop the loop's item in place of another task's output parameter
            healed = heal(
                scored=flagged.outputs["shards"],
                shard=shard,
                settings=heal_settings,
                seed=seed,
                cache_dir=cache_dir,
            )
            where.gpu(healed, "inference")
        merged = merge_healed(
            sft_parts=dsl.Collected(healed.outputs["sft_data"]),
            preference_parts=dsl.Collected(healed.outputs["preferences"]),
        )
        where.cpu(merged, "data")
        return CurationOutputs(
            train=data.outputs["train"],
            eval_toxic=data.outputs["eval_toxic"],
            eval_benign=data.outputs["eval_benign"],
            scored=scan.outputs["scored"],
            sft_data=merged.outputs["sft_data"],
            preferences=merged.outputs["preferences"],
            threshold=scan.outputs["Output"],
        )

    return curation


def curate(
    curation: Any,
    where: Placement,
    data_settings: Any,
    classify_settings: Any,
    heal_settings: Any,
    shards: Any = 1,
    seed: Any = -1,
) -> dsl.PipelineTask:
    """A task of ``curation`` (:func:`build_curation`'s sub-pipeline, built before the
    pipeline that calls it: KFP builds no pipeline inside another): its outputs are the
    training and evaluation sets, the scan (``scored``, ``threshold``) and the heal
    (``sft_data``, ``preferences``). ``seed`` is a loop's seed (the experiment); -1
    leaves each stage's own. ``shards``: how many shards classify and heal run in."""
    return curation(
        data_settings=data_settings,
        classify_settings=classify_settings,
        heal_settings=heal_settings,
        seed=seed,
        shards=shards,
        accelerator_type=where.accelerator_type,
        accelerator_count=where.accelerator_count,
        gpu_node_selector=where.node_selector,
        gpu_tolerations=where.tolerations,
        cache_pvc=where.cache_pvc,
        cache_dir=where.cache_dir,
        hf_token_secret=where.hf_token_secret,
    )


def register_task(
    where: Placement, adapter: Any, evaluation: Any, settings: Any
) -> dsl.PipelineTask:
    """register, uncached (a registry write must happen every run), with KFP's run ids."""
    task = register(
        adapter=adapter,
        evaluation=evaluation,
        settings=settings,
        **RUN_IDS,
    )
    return where.cpu(task, "light").set_caching_options(False)


def rejection_task(where: Placement, evaluation: Any, settings: Any) -> dsl.PipelineTask:
    """record_rejection, uncached, with KFP's run ids (the branch that does not register)."""
    task = record_rejection(evaluation=evaluation, settings=settings, **RUN_IDS)
    return where.cpu(task, "light").set_caching_options(False)
