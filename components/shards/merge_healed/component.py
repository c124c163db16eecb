"""KFP component: heal's per-shard outputs as one SFT set and one preference set."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components.images import IMAGES


@dsl.component(base_image=IMAGES["light"], packages_to_install=[], install_kfp_package=False)
def merge_healed(
    sft_parts: Input[list[Dataset]],
    preference_parts: Input[list[Dataset]],
    sft_data: Output[Dataset],
    preferences: Output[Dataset],
    metrics: Output[Metrics],
):
    """Concatenates heal's per-shard outputs in shard order and sums their metrics.

    Each record's healed reply depends on that record alone (its sampling seed derives
    from its id), so the merged outputs are what an unsharded heal writes.

    Args:
        sft_parts: heal's per-shard SFT sets (``dsl.Collected``), ordered by the
            ``shard`` index in their metadata.
        preference_parts: heal's per-shard preference pairs (``dsl.Collected``).
        sft_data: Every record in input order, flagged ones with the healed reply.
        preferences: DPO pairs in TRL's conversational format, in input order.
        metrics: n, flagged, healed, fallbacks, mean_attempts, pairs, refusals, summed
            over the shards.
    """
    from pathlib import Path

    from optimus_lib.stages import one_line_errors
    from optimus_lib.stages.heal import merge_healed as run_stage
    from optimus_lib.stages.shard import in_order

    with one_line_errors():
        sft = in_order([(Path(p.path), dict(p.metadata)) for p in sft_parts])
        prefs = in_order([(Path(p.path), dict(p.metadata)) for p in preference_parts])
        result = run_stage(
            [(a, b, dict(m.get("heal", {}))) for (a, m), (b, _) in zip(sft, prefs)],
            Path(sft_data.path),
            Path(preferences.path),
        )
    for key, value in result.as_metrics().items():
        metrics.log_metric(key, value)
    carried = ("detector", "seed", "source")
    upstream = {k: sft[0][1][k] for k in carried if k in sft[0][1]}
    sft_data.metadata.update({**upstream, "rows": result.n, "healed": result.healed})
    preferences.metadata.update({**upstream, "rows": result.pairs})
