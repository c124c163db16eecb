"""The experiment pipeline: the paper's robustness table as one KFP run.

Loop 1, per seed: the curation sub-pipeline of :mod:`pipelines.shared` (prepare_data ->
classify at the highest recall any arm uses -> heal of everything it flags, each
inference stage in ``shards`` shards), shared with the defense pipeline. seed_bank
gathers those outputs into one artifact (KFP cannot hand a list collected from one loop
to the tasks of another). Loop 2, per arm (seed, detector
recall, method): arm_inputs (re-threshold the stored scores at the recall, reuse the
seed's healed replies) -> dpo_train -> evaluate, labelled with the arm. compare_arms
collects every evaluation into one table with bootstrap intervals and the paired
difference to no_defense and, when the comparison settings promote a method, checks it
against no_defense: ``promote`` registers its adapter, ``reject`` records why not.

So classify and heal run once per seed, not once per arm; on a cluster each arm's
training runs on its own GPU node (``ARM_PARALLELISM`` at a time). Loops are not nested:
kfp.local (2.17) resolves an outer loop's values wrongly inside an inner loop (the shard
loops sit inside the curation sub-pipeline, where the seed is a parameter, not a loop
value).
``optimus experiment CONFIG.yaml`` builds the parameters from an experiment file
(``optimus_lib.experiment.ExperimentConfig.pipeline_arguments``).
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact

from components.dpo_train.component import dpo_train
from components.evaluate.component import evaluate
from components.experiment.arm_inputs.component import arm_inputs
from components.experiment.compare_arms.component import compare_arms
from components.experiment.seed_bank.component import seed_bank
from pipelines.shared import (
    CACHE_MOUNT,
    DEFAULT_NODE_SELECTOR,
    DEFAULT_TOLERATIONS,
    Placement,
    build_curation,
    curate,
    register_task,
    rejection_task,
)

PIPELINE_NAME = "optimus-experiment"
# How many arms train at once on a cluster (a literal: KFP needs it at compile time),
# each on its own GPU node.
ARM_PARALLELISM = 4


class ExperimentOutputs(NamedTuple):
    """The comparison (kfp.local gives their paths; a cluster shows them in the UI)."""

    results: Artifact
    report: HTML


def build_experiment_pipeline(cluster: bool = True):
    """The experiment pipeline; ``cluster=False`` leaves out the Kubernetes settings and
    retries (:mod:`pipelines.shared`) and runs one seed and one arm at a time: on a
    workstation two torch tasks on the same cores slow each other down several-fold."""

    curation = build_curation(cluster)

    @dsl.pipeline(name=PIPELINE_NAME)
    def experiment_pipeline(
        seeds: list = [0],  # noqa: B006 - KFP needs literal defaults
        arms: list = [  # noqa: B006
            {"seed": 0, "recall": 0.15, "method": "no_defense"},
            {"seed": 0, "recall": 0.15, "method": "optimus"},
        ],
        data_settings: dict = {},  # noqa: B006
        classify_settings: dict = {},  # noqa: B006
        heal_settings: dict = {},  # noqa: B006
        train_settings: dict = {},  # noqa: B006
        evaluate_settings: dict = {"compare_base": False},  # noqa: B006
        register_settings: dict = {},  # noqa: B006
        comparison_settings: dict = {},  # noqa: B006
        accelerator_type: str = "nvidia.com/gpu",
        accelerator_count: int = 1,
        train_accelerator_count: int = 1,
        train_processes: int = 0,
        gpu_node_selector: dict = DEFAULT_NODE_SELECTOR,
        gpu_tolerations: list = DEFAULT_TOLERATIONS,
        cache_pvc: str = "optimus-cache",
        cache_dir: str = CACHE_MOUNT,
        hf_token_secret: str = "hf-token",
        shards: int = 1,
    ) -> ExperimentOutputs:
        """Compares training methods at several detector recalls and seeds on the same data.

        The robustness table of the defense: per seed the data, one classification and its
        heal are made once; each arm re-thresholds the classification at its detector
        recall, trains its method and is evaluated by an evaluator independent of the
        detector. The comparison shows every method side by side with bootstrap intervals
        and the paired difference to no_defense; optionally one method is registered when
        it beats no_defense.

        Args:
            seeds: Seeds of the data, classification and heal (one loop iteration each).
            arms: ``{"seed", "recall", "method"}`` per arm; every seed must be in ``seeds``.
            data_settings: DataSettings (the loop sets the seed).
            classify_settings: ClassifySettings (``target_recall``: the highest any arm uses).
            heal_settings: HealSettings (the loop sets the seed).
            train_settings: TrainSettings (the arm sets the seed and the method).
            evaluate_settings: EvaluateSettings (``compare_base: false``: arms are compared
                with no_defense, not with the base model).
            register_settings: RegisterSettings of a promotion.
            comparison_settings: ComparisonSettings (report title, method order, promote).
            accelerator_type: Accelerator resource of the GPU tasks.
            accelerator_count: Accelerators per inference task (classify, heal, evaluate).
            train_accelerator_count: Accelerators of the training task (dpo_train).
            train_processes: Training processes in dpo_train (0: one per accelerator).
            gpu_node_selector: Node selector of the GPU tasks (node pool labels).
            gpu_tolerations: Tolerations of the GPU tasks (node pool taints).
            cache_pvc: PVC mounted at /optimus-cache in the GPU tasks.
            cache_dir: Cache folder the GPU tasks use; empty: the image default.
            hf_token_secret: Secret whose ``token`` key becomes HF_TOKEN (optional).
            shards: Shards each seed's classify and heal run in (one pod per shard on
                a cluster); their merged outputs equal an unsharded run's.

        Returns:
            compare_arms' results folder and HTML report.
        """
        where = Placement.of(locals(), cluster)
        one_at_a_time = None if cluster else 1
        with dsl.ParallelFor(seeds, parallelism=one_at_a_time, name="seeds") as seed:
            curated = curate(
                curation, where, data_settings, classify_settings, heal_settings, shards, seed
            ).outputs

        bank = seed_bank(
            train=dsl.Collected(curated["train"]),
            eval_toxic=dsl.Collected(curated["eval_toxic"]),
            eval_benign=dsl.Collected(curated["eval_benign"]),
            scored=dsl.Collected(curated["scored"]),
            sft_data=dsl.Collected(curated["sft_data"]),
            preferences=dsl.Collected(curated["preferences"]),
        )
        where.cpu(bank, "light")

        parallelism = ARM_PARALLELISM if cluster else 1
        with dsl.ParallelFor(arms, parallelism=parallelism, name="arms") as arm:
            inputs = arm_inputs(
                bank=bank.outputs["bank"],
                arm=arm,
                classify_settings=classify_settings,
                heal_settings=heal_settings,
                cache_dir=cache_dir,
            )
            where.cpu(inputs, "data")
            trained = dpo_train(
                sft_data=inputs.outputs["sft_data"],
                preferences=inputs.outputs["preferences"],
                settings=train_settings,
                seed=inputs.outputs["seed"],
                method=inputs.outputs["method"],
                cache_dir=cache_dir,
                processes=train_processes,
            )
            where.train(trained)
            scored = evaluate(
                adapter=trained.outputs["adapter"],
                eval_toxic=inputs.outputs["eval_toxic"],
                eval_benign=inputs.outputs["eval_benign"],
                settings=evaluate_settings,
                seed=inputs.outputs["seed"],
                labels=inputs.outputs["labels"],
                cache_dir=cache_dir,
            )
            where.gpu(scored, "inference")

        table = compare_arms(
            evaluations=dsl.Collected(scored.outputs["evaluation"]),
            adapters=dsl.Collected(trained.outputs["adapter"]),
            settings=comparison_settings,
        )
        where.cpu(table, "light").set_caching_options(False)

        with dsl.If(table.outputs["Output"] == "promote", name="promoted"):
            register_task(
                where,
                table.outputs["promoted"],
                table.outputs["promoted_evaluation"],
                register_settings,
            )
        with dsl.Elif(table.outputs["Output"] == "reject", name="not-promoted"):
            rejection_task(where, table.outputs["promoted_evaluation"], register_settings)

        return ExperimentOutputs(results=table.outputs["results"], report=table.outputs["report"])

    return experiment_pipeline


experiment_pipeline = build_experiment_pipeline()
