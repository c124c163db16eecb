"""KFP component: a prosocial reply, in context, for every flagged dialog."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components.images import IMAGES


@dsl.component(base_image=IMAGES["torch"], packages_to_install=[], install_kfp_package=False)
def heal(
    scored: Input[Dataset],
    threshold: float,
    sft_data: Output[Dataset],
    preferences: Output[Dataset],
    metrics: Output[Metrics],
    mode: str = "",
    rescore_detector: str = "",
    detector: str = "",
    model: str = "",
    revision: str = "",
    seed: int = -1,
    cache_dir: str = "",
    settings: dict = {},  # noqa: B006 - KFP needs a literal default
):
    """Rewrites every flagged reply into a prosocial one and re-scores it.

    An aligned model writes a reply in the dialog's context (``mode: contextual``), or
    every flagged reply becomes one fixed reply (``mode: fixed``). A healed reply that the
    re-score detector still flags is retried, then replaced by the fixed reply.

    Args:
        scored: Classify's output: records with ``toxicity`` and ``flagged``.
        threshold: The threshold classify used (its return value); healed replies are
            re-scored against it unless ``settings.rescore_threshold`` is set.
        sft_data: Every record in input order, flagged ones with the healed reply
            (``healed: true`` plus ``heal`` provenance).
        preferences: DPO pairs in TRL's conversational format: ``prompt``, ``chosen``
            (healed), ``rejected`` (the original flagged reply).
        metrics: n, flagged, healed, fallbacks, mean_attempts, pairs.
        mode: contextual or fixed; empty: ``settings.mode`` (default contextual).
        rescore_detector: Detector that re-scores healed replies (never the label-reading
            oracle); empty: ``settings.rescore_detector``, else ``detector``.
        detector: Classify's detector, the re-score detector when nothing else names one
            (default auto: llm-judge with a non-bundled ``model``, else stack).
        model: The aligned model that writes healed replies; empty: ``settings.model``.
        revision: Hub revision (commit sha or tag) of ``model``, when it is a hub id.
        seed: Sampling seed; -1: ``settings.seed`` (default 0).
        cache_dir: Model cache folder (a mounted PVC on a cluster); empty: the default.
        settings: Other ``HealSettings`` fields (retries, max_new_tokens, top_p,
            temperature, fixed_reply, ...); a bad value fails the task with one line
            naming the field.
    """
    from pathlib import Path

    from optimus_lib.settings import load_settings
    from optimus_lib.stages import model_spec, one_line_errors, use_cache_dir
    from optimus_lib.stages.heal import HealSettings
    from optimus_lib.stages.heal import heal as run_stage

    use_cache_dir(cache_dir)
    with one_line_errors():
        s = load_settings(
            HealSettings,
            settings,
            mode=mode or None,
            rescore_detector=rescore_detector
            or settings.get("rescore_detector")
            or detector
            or None,
            model=model_spec(model, revision),
            seed=None if seed < 0 else seed,
        )
        result = run_stage(
            s, Path(scored.path), threshold, Path(sft_data.path), Path(preferences.path)
        )
    for key, value in result.as_metrics().items():
        metrics.log_metric(key, value)
    upstream = {k: scored.metadata[k] for k in ("detector", "seed") if k in scored.metadata}
    sft_data.metadata.update({**upstream, "rows": result.n, "healed": result.healed})
    preferences.metadata.update({**upstream, "rows": result.pairs})
