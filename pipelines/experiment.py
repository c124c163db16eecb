"""The experiment pipeline: the paper's robustness table as one KFP run.

Loop 1, per seed: prepare_data -> classify (at the highest recall any arm uses) -> heal
(everything it flags).
seed_bank gathers those outputs into one artifact (KFP cannot hand a list collected from
one loop to the tasks of another). Loop 2, per arm (seed, detector recall, method):
arm_inputs (re-threshold the stored scores at the recall, reuse the seed's healed
replies) -> dpo_train -> evaluate, labelled with the arm. compare_arms collects every
evaluation into one table with bootstrap intervals and the paired difference to
no_defense, and, when ``promote_method`` is set, checks that method against no_defense:
``promote`` registers its adapter, ``reject`` records why not.

So classify and heal run once per seed, not once per arm; on a cluster each arm's
training runs on its own GPU node (``arm_parallelism`` at a time). Loops are not nested:
kfp.local (2.17) resolves an outer loop's values wrongly inside an inner loop.
``optimus experiment CONFIG.yaml`` builds the parameters from an experiment file
(``optimus_lib.experiment.ExperimentConfig``) and runs this under kfp.local.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact

from components.arm_inputs.component import arm_inputs
from components.classify.component import classify
from components.compare_arms.component import compare_arms
from components.dpo_train.component import dpo_train
from components.evaluate.component import evaluate
from components.heal.component import heal
from components.prepare_data.component import prepare_data
from components.seed_bank.component import seed_bank
from pipelines.defense import (
    CACHE_MOUNT,
    DEFAULT_NODE_SELECTOR,
    DEFAULT_TOLERATIONS,
    _gpu,
    _resources,
    register_task,
    rejection_task,
)

PIPELINE_NAME = "optimus-experiment"
# How many arms train at once (a literal: KFP needs it at compile time). On a cluster
# each runs on its own GPU node; kfp.local runs them one by one regardless.
ARM_PARALLELISM = 4


class ExperimentOutputs(NamedTuple):
    """The comparison (kfp.local gives their paths; a cluster shows them in the UI)."""

    results: Artifact
    report: HTML


def build_experiment_pipeline(kubernetes_settings: bool = True):
    """The experiment pipeline; ``kubernetes_settings=False`` leaves out the GPU tasks'
    accelerator, node selector, tolerations, PVC and secret, which kfp.local (2.17)
    cannot resolve inside a ParallelFor ("Parent pipeline input argument ... not
    found") and would ignore anyway. The compiled YAML always has them."""

    @dsl.pipeline(name=PIPELINE_NAME)
    def experiment_pipeline(
        seeds: list = [0],  # noqa: B006 - KFP needs literal defaults
        arms: list = [  # noqa: B006
            {"seed": 0, "recall": 0.15, "method": "no_defense"},
            {"seed": 0, "recall": 0.15, "method": "optimus"},
        ],
        name: str = "experiment",
        model: str = "smollm2-135m-instruct",
        judge_model: str = "smollm2-135m-instruct",
        detector: str = "auto",
        rescore_detector: str = "",
        train_uri: str = "",
        scan_recall: float = 0.0,
        data_settings: dict = {},  # noqa: B006
        classify_settings: dict = {},  # noqa: B006
        heal_settings: dict = {},  # noqa: B006
        train_settings: dict = {},  # noqa: B006
        evaluate_settings: dict = {"compare_base": False},  # noqa: B006
        methods: list = [],  # noqa: B006
        promote_method: str = "",
        promote_gates: dict = {},  # noqa: B006
        promote_require_effect: bool = True,
        registry: str = "",
        model_name: str = "optimus-chat",
        accelerator_type: str = "nvidia.com/gpu",
        accelerator_count: int = 1,
        gpu_node_selector: dict = DEFAULT_NODE_SELECTOR,
        gpu_tolerations: list = DEFAULT_TOLERATIONS,
        cache_pvc: str = "optimus-cache",
        cache_dir: str = CACHE_MOUNT,
        hf_token_secret: str = "hf-token",
    ) -> ExperimentOutputs:
        """Compares training methods at several detector recalls and seeds on the same data.

        The robustness table of the defense: per seed the data, one scan and its
        heal are made once; each arm re-thresholds the scan at its detector recall, trains
        its method and is evaluated by an evaluator independent of the detector. The
        comparison shows every method side by side with bootstrap intervals and the paired
        difference to no_defense; optionally one method is registered when it beats
        no_defense.

        Args:
            seeds: Seeds of the data, scan and heal (one loop iteration each).
            arms: ``{"seed", "recall", "method"}`` per arm; every seed must be in ``seeds``.
            name: The experiment's name (report title).
            model: The chat model every arm fine-tunes.
            judge_model: The model that judges (llm-judge) and writes healed replies.
            detector: Classify's detector (e.g. ``oracle+wordlist`` to simulate recall).
            rescore_detector: Heal's re-score detector; empty: ``detector``.
            train_uri: Training JSONL; empty: the bundled poisoned benchmark.
            scan_recall: Weaken the seeds' scan to the highest recall any arm uses, so
                heal writes only replies some arm trains on; 0: as it is (an arm at 1).
            data_settings: Other DataSettings fields.
            classify_settings: Other ClassifySettings fields.
            heal_settings: Other HealSettings fields.
            train_settings: Other TrainSettings fields (the method comes from the arm).
            evaluate_settings: Other EvaluateSettings fields (``compare_base: false``: the
                arms are compared with no_defense, not with the base model).
            methods: Row order in the table; empty: the library's order.
            promote_method: Method to register when it beats no_defense; empty: none.
            promote_gates: Gates relative to no_defense for the promotion.
            promote_require_effect: Also require the paired toxic-RTR interval below 0.
            registry: Model registry location for a promotion; empty: the default.
            model_name: Name of the registered model.
            accelerator_type: Accelerator resource of the GPU tasks.
            accelerator_count: Accelerators per GPU task.
            gpu_node_selector: Node selector of the GPU tasks (node pool labels).
            gpu_tolerations: Tolerations of the GPU tasks (node pool taints).
            cache_pvc: PVC mounted at /optimus-cache in the GPU tasks.
            cache_dir: Cache folder the GPU tasks use; empty: the image default (local runs).
            hf_token_secret: Secret whose ``token`` key becomes HF_TOKEN (optional).

        Returns:
            compare_arms' results folder and HTML report.
        """

        def on_gpu(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
            _resources(task, name)
            return _gpu(task, **gpu) if kubernetes_settings else task

        gpu = dict(
            accelerator_type=accelerator_type,
            accelerator_count=accelerator_count,
            node_selector=gpu_node_selector,
            tolerations=gpu_tolerations,
            cache_pvc=cache_pvc,
            hf_token_secret=hf_token_secret,
        )
        # kfp.local runs loop iterations side by side unless told otherwise: on a workstation
        # two torch tasks on the same cores slow each other down several-fold, one at a time
        seed_parallelism = None if kubernetes_settings else 1
        with dsl.ParallelFor(seeds, parallelism=seed_parallelism, name="seeds") as seed:
            data = prepare_data(train_uri=train_uri, seed=seed, settings=data_settings)
            _resources(data, "prepare_data")
            scan = classify(
                dialogs=data.outputs["train"],
                detector=detector,
                model=judge_model,
                target_recall=scan_recall,
                cache_dir=cache_dir,
                settings=classify_settings,
            )
            on_gpu(scan, "classify")
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
            on_gpu(healed, "heal")

        bank = seed_bank(
            train=dsl.Collected(data.outputs["train"]),
            eval_toxic=dsl.Collected(data.outputs["eval_toxic"]),
            eval_benign=dsl.Collected(data.outputs["eval_benign"]),
            scored=dsl.Collected(scan.outputs["scored"]),
            sft_data=dsl.Collected(healed.outputs["sft_data"]),
            preferences=dsl.Collected(healed.outputs["preferences"]),
        )
        _resources(bank, "register")

        parallelism = ARM_PARALLELISM if kubernetes_settings else 1  # as for the seeds
        with dsl.ParallelFor(arms, parallelism=parallelism, name="arms") as arm:
            inputs = arm_inputs(
                bank=bank.outputs["bank"],
                arm=arm,
                detector=detector,
                rescore_detector=rescore_detector,
                judge_model=judge_model,
                cache_dir=cache_dir,
                classify_settings=classify_settings,
                heal_settings=heal_settings,
            )
            _resources(inputs, "prepare_data")
            trained = dpo_train(
                sft_data=inputs.outputs["sft_data"],
                preferences=inputs.outputs["preferences"],
                method=inputs.outputs["method"],
                model=model,
                seed=inputs.outputs["seed"],
                cache_dir=cache_dir,
                settings=train_settings,
            )
            on_gpu(trained, "dpo_train")
            trained.set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0)
            scored = evaluate(
                adapter=trained.outputs["adapter"],
                eval_toxic=inputs.outputs["eval_toxic"],
                eval_benign=inputs.outputs["eval_benign"],
                model=model,
                seed=inputs.outputs["seed"],
                cache_dir=cache_dir,
                settings=evaluate_settings,
                labels=inputs.outputs["labels"],
            )
            on_gpu(scored, "evaluate")

        table = compare_arms(
            evaluations=dsl.Collected(scored.outputs["evaluation"]),
            adapters=dsl.Collected(trained.outputs["adapter"]),
            name=name,
            methods=methods,
            promote_method=promote_method,
            promote_gates=promote_gates,
            promote_require_effect=promote_require_effect,
        )
        _resources(table, "register").set_caching_options(False)

        with dsl.If(table.outputs["Output"] == "promote", name="promoted"):
            register_task(
                table.outputs["promoted"],
                table.outputs["promoted_evaluation"],
                registry,
                model_name,
            )
        with dsl.Elif(table.outputs["Output"] == "reject", name="not-promoted"):
            rejection_task(table.outputs["promoted_evaluation"], registry, model_name)

        return ExperimentOutputs(results=table.outputs["results"], report=table.outputs["report"])

    return experiment_pipeline


experiment_pipeline = build_experiment_pipeline()
