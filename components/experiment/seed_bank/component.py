"""KFP component: gather every seed's shared outputs into one artifact (experiment)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.images import IMAGES


@dsl.component(base_image=IMAGES["light"], packages_to_install=[], install_kfp_package=False)
def seed_bank(
    train: Input[list[Dataset]],
    eval_toxic: Input[list[Dataset]],
    eval_benign: Input[list[Dataset]],
    scored: Input[list[Dataset]],
    sft_data: Input[list[Dataset]],
    preferences: Input[list[Dataset]],
    bank: Output[Artifact],
):
    """Gathers each seed's data, scan and heal into one folder for the experiment's arms.

    The experiment pipeline runs prepare_data, classify and heal once per seed in one
    loop and trains every arm in another; KFP cannot pass a list collected from one loop
    into the tasks of another, but it can pass one artifact. Inputs are matched by the
    ``seed`` their producers recorded in the metadata, not by fan-in order.

    Args:
        train: prepare_data's training sets, one per seed (``dsl.Collected``).
        eval_toxic: prepare_data's held-out toxic contexts, one per seed.
        eval_benign: prepare_data's held-out benign dialogs, one per seed.
        scored: classify's scans, one per seed (metadata holds the threshold).
        sft_data: heal's SFT sets, one per seed.
        preferences: heal's preference pairs, one per seed.
        bank: A folder ``seed<S>/{train,eval_toxic,eval_benign,scored,sft,prefs}.jsonl``
            plus ``seed<S>/threshold.json``; metadata ``seeds``.
    """
    from pathlib import Path

    from optimus_lib.stages import one_line_errors
    from optimus_lib.stages.arms import bank_seeds

    def pairs(arts):
        return [(Path(a.path), dict(a.metadata)) for a in arts]

    with one_line_errors():
        seeds = bank_seeds(
            {
                "train": pairs(train),
                "eval_toxic": pairs(eval_toxic),
                "eval_benign": pairs(eval_benign),
                "scored": pairs(scored),
                "sft": pairs(sft_data),
                "prefs": pairs(preferences),
            },
            Path(bank.path),
        )
    bank.metadata["seeds"] = seeds
    print(f"seed_bank: seeds {seeds}")
