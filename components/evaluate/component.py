"""KFP component: toxicity and utility of the fine-tuned model, and the gate verdict."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.images import IMAGES


@dsl.component(base_image=IMAGES["torch"], packages_to_install=[], install_kfp_package=False)
def evaluate(
    adapter: Input[Model],
    eval_toxic: Input[Dataset],
    eval_benign: Input[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
    evaluation: Output[Artifact],
    settings: dict = {},  # noqa: B006 - KFP needs a literal default
    seed: int = -1,
    labels: dict = {},  # noqa: B006
    cache_dir: str = "",
) -> bool:
    """Evaluates the adapter (and the base model) and checks the registration gates.

    The model answers held-out toxic contexts and benign dialogs; an evaluator
    independent of the classify detector judges every reply (RTR: response toxicity rate),
    and a second one that reads the context judges them again (``*_context`` metrics).
    Utility: perplexity of reference replies, over-refusal, diversity and (optionally)
    embedding similarity. Gates (``settings.gates``: max_rtr_toxic, max_rtr_ratio,
    max_perplexity_increase, max_over_refusal) decide the verdict; failed gates are
    printed and kept in ``evaluation``.

    Args:
        adapter: The PEFT adapter from dpo_train.
        eval_toxic: Held-out toxic contexts (JSONL).
        eval_benign: Held-out benign dialogs with reference replies (JSONL).
        metrics: rtr_toxic, rtr_benign, rtr_toxic_context, rtr_benign_context, perplexity,
            over_refusal, distinct_n, ...;
            ``base_``-prefixed for the base model; passed (1 or 0).
        report: The HTML evaluation report.
        evaluation: Results JSON (metrics, base metrics, gate with reasons, every
            generation): register's and record_rejection's input.
        settings: ``EvaluateSettings``, resolved by the client: ``model`` (the base model
            the adapter was trained on), ``evaluator`` (the detector that judges replies,
            independent of classify's), ``context_evaluator``, ``seed``, ``gates``, ``max_new_tokens``,
            ``do_sample``, ``samples``, ``similarity``, ``compare_base``, ...; a bad value
            fails the task with one line naming the field.
        seed: Set by a loop over arms (the experiment); -1: ``settings.seed``.
        labels: What is evaluated (an experiment arm: seed, recall_target, method, ...),
            stored in ``evaluation`` and its metadata for the comparison step.
        cache_dir: Model cache folder (a mounted PVC on a cluster); empty: the default.

    Returns:
        True when every checked gate holds (register runs), else False.
    """
    from pathlib import Path

    from optimus_lib.settings import load_settings, loop_values
    from optimus_lib.stages import one_line_errors, use_cache_dir
    from optimus_lib.stages.evaluate import EvaluateSettings
    from optimus_lib.stages.evaluate import evaluate as run_stage

    use_cache_dir(cache_dir)
    with one_line_errors():
        s = load_settings(EvaluateSettings, settings, **loop_values(seed=seed))
        result = run_stage(
            s,
            Path(adapter.path),
            Path(eval_toxic.path),
            Path(eval_benign.path),
            Path(report.path),
            Path(evaluation.path),
            labels={**labels, "adapter_uri": adapter.uri},
        )
    for key, value in result.as_metrics().items():
        metrics.log_metric(key, value)
    evaluation.metadata.update(
        {"passed": result.passed, "reasons": list(result.reasons), "labels": {**labels}}
    )
    print("evaluate: gates passed" if result.passed else "evaluate: gates failed")
    for reason in result.reasons:
        print(f"  - {reason}")
    return result.passed
