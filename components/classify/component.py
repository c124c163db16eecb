"""KFP component: score every dialog's reply in context, choose the threshold, flag."""

from kfp import dsl
from kfp.dsl import ClassificationMetrics, Dataset, Input, Metrics, Output

from components.images import IMAGES


@dsl.component(base_image=IMAGES["torch"], packages_to_install=[], install_kfp_package=False)
def classify(
    dialogs: Input[Dataset],
    scored: Output[Dataset],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    settings: dict = {},  # noqa: B006 - KFP needs a literal default
    cache_dir: str = "",
) -> float:
    """Scores every dialog's last reply in its context and flags the toxic ones.

    Writes the input records in input order, each with ``toxicity`` (the detector's score)
    and ``flagged`` (``toxicity >= threshold``). The threshold is the one given or the
    calibrated one, and is returned so the next stage (heal) receives it explicitly.
    With labels, precision / recall / AUC go to ``metrics`` and the ROC curve and
    confusion matrix to ``classification``.

    Args:
        dialogs: Dialogs to score (JSONL: ``messages`` or ``context`` + ``response``).
        scored: The same records plus ``toxicity`` and ``flagged``.
        metrics: n, flagged, flag_rate, threshold; precision, recall, f1, fpr, auc when
            the records carry labels.
        classification: ROC curve and confusion matrix (labelled records only).
        settings: ``ClassifySettings``, resolved by the client: ``detector`` (auto, stack,
            llm-judge, lexical, wordlist, hf-classifier, oracle, or an ensemble 'a+b',
            'max(a,b)'; auto: llm-judge when ``model`` is a judge other than the bundled
            one, else stack), ``model`` (judge or classifier: bundled name, folder or hub
            id pinned as ``org/name@<sha>``), ``threshold``, ``calibrate``,
            ``target_recall`` (weaken on purpose; robustness experiments), ``batch_size``,
            ``engine``, ``device``, ...; a bad value fails the task with one line naming
            the field.
        cache_dir: Model cache folder (a mounted PVC on a cluster); empty: the default.

    Returns:
        The threshold used to flag (heal's ``threshold`` input).
    """
    from pathlib import Path

    from optimus_lib.settings import load_settings
    from optimus_lib.stages import one_line_errors, use_cache_dir
    from optimus_lib.stages.classify import ClassifySettings
    from optimus_lib.stages.classify import classify as run_stage

    use_cache_dir(cache_dir)
    with one_line_errors():
        s = load_settings(ClassifySettings, settings)
        result = run_stage(s, Path(dialogs.path), Path(scored.path))
    summary = result.as_metrics()
    for key, value in summary.items():
        metrics.log_metric(key, value)
    if result.roc is not None:
        roc = result.roc
        classification.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
    if result.confusion is not None:
        classification.log_confusion_matrix(["safe", "toxic"], result.confusion)
    quality = ("threshold", "precision", "recall", "f1", "fpr", "auc")
    scored.metadata.update(
        {
            "rows": result.n,
            "flagged": result.flagged,
            "detector": {
                "name": result.detector,
                **{k: summary[k] for k in quality if k in summary},
            },
            # the data's seed, when its producer recorded one (experiment fan-in)
            **{k: dialogs.metadata[k] for k in ("seed", "source") if k in dialogs.metadata},
        }
    )
    return result.threshold
