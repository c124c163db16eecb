"""KFP component: the experiment's comparison table, and the promotion verdict."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Model, Output

from components.images import IMAGES


@dsl.component(base_image=IMAGES["torch"], packages_to_install=[], install_kfp_package=False)
def compare_arms(
    evaluations: Input[list[Artifact]],
    adapters: Input[list[Model]],
    results: Output[Artifact],
    report: Output[HTML],
    metrics: Output[Metrics],
    promoted: Output[Model],
    promoted_evaluation: Output[Artifact],
    settings: dict = {},  # noqa: B006 - KFP needs a literal default
) -> str:
    """Compares every arm side by side; optionally picks one adapter to register.

    Rows per arm (seed, detector recall, method) with 95 % bootstrap intervals of toxic
    and benign RTR and the paired interval of the toxic-RTR difference to no_defense of
    the same seed; a summary over seeds; an HTML report with the table and plots. With
    ``settings.promote``, that method's arm (first seed, first recall) is checked against
    no_defense: gates relative to it and, with ``require_effect``, a paired interval
    below 0.

    Args:
        evaluations: Every arm's evaluate results (``dsl.Collected``), labelled by arm.
        adapters: Every arm's dpo_train adapter (``dsl.Collected``).
        results: ``results.json`` (rows, summary, promotion) with ``results.csv`` beside
            it (the artifact is a folder).
        report: The comparison report.
        metrics: Per (recall, method) mean toxic RTR, perplexity and over-refusal.
        promoted: The promoted arm's adapter (empty when nothing is promoted).
        promoted_evaluation: Its evaluation with the gate replaced by the promotion
            verdict and no_defense's metrics as the reference (register's and
            record_rejection's input).
        settings: ``ComparisonSettings``: ``name`` (report title), ``methods`` (row
            order; empty: the library's), ``promote`` (``method``, ``gates`` relative to
            no_defense, ``require_effect``; absent: compare only).

    Returns:
        ``promote`` (register), ``reject`` (record the rejection) or ``none`` (no
        promotion asked).
    """
    from pathlib import Path

    from optimus_lib.experiment.compare import collect
    from optimus_lib.experiment.config import ComparisonSettings
    from optimus_lib.settings import load_settings
    from optimus_lib.stages import one_line_errors

    with one_line_errors():
        done = collect(
            load_settings(ComparisonSettings, settings),
            [Path(e.path) for e in evaluations],
            [(a.uri, Path(a.path), dict(a.metadata)) for a in adapters],
            Path(results.path),
            Path(report.path),
            Path(promoted.path),
            Path(promoted_evaluation.path),
        )
    for key, value in done.metrics.items():
        metrics.log_metric(key, value)
    promoted.metadata.update(done.promoted_metadata)
    if done.decision != "none":
        passed = done.decision == "promote"
        promoted_evaluation.metadata.update({"passed": passed, "reasons": done.reasons})
    print(f"compare_arms: {done.decision}")
    for reason in done.reasons:
        print(f"  - {reason}")
    return done.decision
