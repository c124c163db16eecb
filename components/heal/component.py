"""KFP component: a prosocial reply, in context, for every flagged dialog."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components.images import IMAGES


@dsl.component(base_image=IMAGES["torch"], packages_to_install=[], install_kfp_package=False)
def heal(
    scored: Input[Dataset],
    sft_data: Output[Dataset],
    preferences: Output[Dataset],
    metrics: Output[Metrics],
    threshold: float = -1.0,
    settings: dict = {},  # noqa: B006 - KFP needs a literal default
    seed: int = -1,
    cache_dir: str = "",
    shard: int = -1,
):
    """Rewrites every flagged reply into a prosocial one and re-scores it.

    An aligned model writes a reply in the dialog's context (``mode: contextual``), or
    every flagged reply becomes one fixed reply (``mode: fixed``). A healed reply that the
    re-score detector still flags is retried, then replaced by the fixed reply.

    Args:
        scored: Classify's output: records with ``toxicity`` and ``flagged``.
        threshold: The threshold classify used (its return value); healed replies are
            re-scored against it unless ``settings.rescore_threshold`` is set. -1: the
            one split recorded with the shards (a sharded heal).
        sft_data: Every record in input order, flagged ones with the healed reply
            (``healed: true`` plus ``heal`` provenance).
        preferences: DPO pairs in TRL's conversational format: ``prompt``, ``chosen``
            (healed), ``rejected`` (the original flagged reply).
        metrics: n, flagged, healed, fallbacks, mean_attempts, pairs.
        settings: ``HealSettings``, resolved by the client: ``mode`` (contextual or
            fixed), ``model`` (the aligned model that writes healed replies),
            ``rescore_detector`` (re-scores healed replies; never the label-reading
            oracle; the client sets it to classify's detector unless the settings name
            another), ``seed``, ``retries``, ``max_new_tokens``, ``top_p``,
            ``temperature``, ``fixed_reply``, ...; a bad value fails the task with one
            line naming the field.
        seed: Set by a loop over seeds (the experiment); -1: ``settings.seed``.
        cache_dir: Model cache folder (a mounted PVC on a cluster); empty: the default.
        shard: -1: ``scored`` is one dataset. ``i >= 0``: ``scored`` is split's folder
            and only shard ``i`` is healed (merge_healed joins the shards).
    """
    from pathlib import Path

    from optimus_lib.errors import OptimusError
    from optimus_lib.settings import load_settings, loop_values
    from optimus_lib.stages import one_line_errors, use_cache_dir
    from optimus_lib.stages.heal import HealSettings
    from optimus_lib.stages.heal import heal as run_stage
    from optimus_lib.stages.shard import shard_of

    use_cache_dir(cache_dir)
    with one_line_errors():
        s = load_settings(HealSettings, settings, **loop_values(seed=seed))
        part = shard_of(Path(scored.path), shard) if shard >= 0 else None
        cut = threshold if threshold >= 0 or part is None else part.threshold
        if cut is None or cut < 0:
            raise OptimusError("heal: no threshold (pass classify's, or split's shards)")
        result = run_stage(
            s,
            part.path if part else Path(scored.path),
            cut,
            Path(sft_data.path),
            Path(preferences.path),
            start=part.start if part else 0,
        )
    for key, value in result.as_metrics().items():
        metrics.log_metric(key, value)
    carried = ("detector", "seed", "source")
    upstream = {k: scored.metadata[k] for k in carried if k in scored.metadata}
    sft_data.metadata.update({**upstream, "rows": result.n, "healed": result.healed})
    preferences.metadata.update({**upstream, "rows": result.pairs})
    if part is not None:  # merge_healed orders the shards and sums their metrics
        sft_data.metadata.update({**part.metadata(), "heal": result.as_metrics()})
        preferences.metadata.update(part.metadata())
