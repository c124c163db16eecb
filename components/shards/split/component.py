"""KFP component: a dataset as N contiguous shards, for a loop that runs a stage per shard."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.images import IMAGES


@dsl.component(base_image=IMAGES["light"], packages_to_install=[], install_kfp_package=False)
def split(
    dataset: Input[Dataset],
    shards: Output[Dataset],
    count: int = 1,
    balance: str = "records",
    threshold: float = -1.0,
) -> list:
    """Splits a dataset into contiguous shards so a stage can run once per shard.

    Shards are contiguous runs of records, so the per-shard outputs concatenated in shard
    order are in input order; each shard records its offset in the whole dataset. The
    returned list of shard indexes is what ``dsl.ParallelFor`` iterates over.

    Args:
        dataset: The JSONL dataset to split (prepare_data's training set, or classify's
            merged scan for heal).
        shards: A folder of ``<i>.jsonl`` shards plus ``manifest.json`` (each shard's
            file, offset and row count); metadata carries the input's seed, source and
            detector.
        count: How many shards (1 to 1024); fewer when there is less work than shards.
        balance: ``records`` (equal records per shard: classify scores every record) or
            ``flagged`` (equal flagged records per shard: heal generates for those only).
        threshold: classify's threshold, recorded with the shards for a sharded heal;
            -1: none.

    Returns:
        The shard indexes ``[0, ..., n - 1]``.
    """
    from pathlib import Path

    from optimus_lib.stages import one_line_errors
    from optimus_lib.stages.shard import split_dataset

    with one_line_errors():
        cut = threshold if threshold >= 0 else None
        written = split_dataset(Path(dataset.path), Path(shards.path), count, balance, cut)
    carried = ("detector", "seed", "source")
    shards.metadata.update({k: dataset.metadata[k] for k in carried if k in dataset.metadata})
    shards.metadata.update({"shards": len(written), "rows": sum(s.rows for s in written)})
    print(f"split: {len(written)} shard(s) of {[s.rows for s in written]} records")
    return [s.index for s in written]
