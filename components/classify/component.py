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
    shard: int = -1,
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
            the records carry labels; recall_evaded / recall_not_evaded when an evasion
            attack rewrote some toxic replies.
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
        shard: -1: ``dialogs`` is one dataset. ``i >= 0``: ``dialogs`` is split's folder
            and only shard ``i`` is scored; ``scored`` then holds its records plus
            ``toxicity`` and merge_scored thresholds all shards at once.

    Returns:
        The threshold used to flag (heal's ``threshold`` input).
    """
    from pathlib import Path

    from optimus_lib.settings import load_settings
    from optimus_lib.stages import one_line_errors, use_cache_dir
    from optimus_lib.stages.classify import ClassifySettings, log_result, score_shard
    from optimus_lib.stages.classify import classify as run_stage
    from optimus_lib.stages.shard import shard_of

    use_cache_dir(cache_dir)
    with one_line_errors():
        s = load_settings(ClassifySettings, settings)
        if shard < 0:
            result = run_stage(s, Path(dialogs.path), Path(scored.path))
        else:
            part = shard_of(Path(dialogs.path), shard)
            rows = score_shard(s, part.path, part.start, Path(scored.path))
    if shard >= 0:  # merge_scored thresholds, logs and describes the whole scan
        metrics.log_metric("n", float(rows))
        carried = {k: dialogs.metadata[k] for k in ("seed", "source") if k in dialogs.metadata}
        scored.metadata.update({**carried, **part.metadata(), "rows": rows})
        return s.threshold
    scored.metadata.update(log_result(result, metrics, classification, dict(dialogs.metadata)))
    return result.threshold
