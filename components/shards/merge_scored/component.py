"""KFP component: classify's scored shards as one scan, thresholded over the whole dataset."""

from kfp import dsl
from kfp.dsl import ClassificationMetrics, Dataset, Input, Metrics, Output

from components.images import IMAGES


@dsl.component(base_image=IMAGES["torch"], packages_to_install=[], install_kfp_package=False)
def merge_scored(
    parts: Input[list[Dataset]],
    scored: Output[Dataset],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    settings: dict = {},  # noqa: B006 - KFP needs a literal default
    cache_dir: str = "",
) -> float:
    """Merges classify's per-shard scores and flags them with one threshold.

    The threshold is one value for the whole dataset: calibrated on the merged scores
    (``gmm``) or on the calibration data (``fpr``, ``f1``: the detector scores it here),
    and ``target_recall`` weakens over every toxic record, not per shard. The outputs are
    classify's, as an unsharded classify writes them.

    Args:
        parts: classify's per-shard scores (``dsl.Collected``), put back in shard order by
            the ``shard`` index in their metadata.
        scored: Every record in input order, with ``toxicity`` and ``flagged``.
        metrics: n, flagged, flag_rate, threshold; precision, recall, f1, fpr, auc when
            the records carry labels.
        classification: ROC curve and confusion matrix (labelled records only).
        settings: ``ClassifySettings``: the same settings the shards scored with.
        cache_dir: Model cache folder (a mounted PVC on a cluster); empty: the default.

    Returns:
        The threshold used to flag (heal's ``threshold`` input).
    """
    from pathlib import Path

    from optimus_lib.settings import load_settings
    from optimus_lib.stages import one_line_errors, use_cache_dir
    from optimus_lib.stages.classify import ClassifySettings, flag_shards, log_result
    from optimus_lib.stages.shard import in_order

    use_cache_dir(cache_dir)
    with one_line_errors():
        s = load_settings(ClassifySettings, settings)
        ordered = in_order([(Path(p.path), dict(p.metadata)) for p in parts])
        result = flag_shards(s, [path for path, _ in ordered], Path(scored.path))
    upstream = ordered[0][1]
    scored.metadata.update(log_result(result, metrics, classification, upstream))
    print(f"merge_scored: {len(ordered)} shard(s), {result.n} records, {result.flagged} flagged")
    return result.threshold
