"""KFP component: one experiment arm's training inputs, from the seed bank."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.images import IMAGES


@dsl.component(base_image=IMAGES["torch"], packages_to_install=[], install_kfp_package=False)
def arm_inputs(
    bank: Input[Artifact],
    arm: dict,
    sft_data: Output[Dataset],
    preferences: Output[Dataset],
    eval_toxic: Output[Dataset],
    eval_benign: Output[Dataset],
    classify_settings: dict = {},  # noqa: B006 - KFP needs a literal default
    heal_settings: dict = {},  # noqa: B006
    cache_dir: str = "",
) -> NamedTuple("ArmInfo", seed=int, method=str, labels=dict):
    """Derives one arm's SFT set and preference pairs at its detector recall.

    The seed's stored classify output is re-thresholded at the threshold classify used
    and weakened to the arm's recall (no detector runs); the healed replies come from the
    seed's heal by content (nothing is generated again; fixed_heal gets a fixed-reply
    heal). By method: no_defense trains on the original replies, filter and star_dss on
    the classified set, no_dpo and optimus on the heal, fixed_heal on the fixed-reply heal.

    Args:
        bank: seed_bank's folder.
        arm: ``{"seed", "recall", "method"}`` (recall in (0, 1]; 1: as classified).
        sft_data: The arm's training dialogs (dpo_train's ``sft_data``); metadata: the
            arm's labels and its detector (name, threshold, measured recall/precision).
        preferences: The arm's DPO pairs; empty for methods without DPO.
        eval_toxic: The seed's held-out toxic contexts.
        eval_benign: The seed's held-out benign dialogs.
        classify_settings: The experiment's resolved ``ClassifySettings``.
        heal_settings: The experiment's resolved ``HealSettings`` (the arm sets the seed).
        cache_dir: Model cache folder (a mounted PVC on a cluster); empty: the default.

    Returns:
        seed: The arm's seed (dpo_train's and evaluate's ``seed``).
        method: The arm's training method (dpo_train's ``method``).
        labels: The arm and its detector's measured recall, precision and flagged count
            (evaluate's ``labels``, read by compare_arms).
    """
    import shutil
    from collections import namedtuple
    from pathlib import Path

    from optimus_lib.settings import load_settings
    from optimus_lib.stages import one_line_errors, use_cache_dir
    from optimus_lib.stages.arms import arm_inputs as run_stage
    from optimus_lib.stages.arms import parse_arm
    from optimus_lib.stages.classify import ClassifySettings
    from optimus_lib.stages.heal import HealSettings

    use_cache_dir(cache_dir)
    with one_line_errors():
        seed, recall, method = parse_arm(arm)
        cls = load_settings(ClassifySettings, classify_settings)
        h = load_settings(HealSettings, heal_settings, seed=seed)
        result = run_stage(
            cls,
            h,
            Path(bank.path),
            seed,
            recall,
            method,
            Path(sft_data.path),
            Path(preferences.path),
        )
    for name, out in (("eval_toxic", eval_toxic), ("eval_benign", eval_benign)):
        shutil.copyfile(Path(bank.path) / f"seed{seed}" / f"{name}.jsonl", out.path)
        out.metadata["seed"] = seed
    labels = result.labels()
    sft_data.metadata.update({**labels, "detector": result.detector, "source": result.source})
    print(f"arm_inputs: {labels}")
    out = namedtuple("ArmInfo", ["seed", "method", "labels"])
    return out(seed, method, labels)
