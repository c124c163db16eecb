"""KFP component: SFT then DPO (PEFT LoRA) on the healed data."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import IMAGES


@dsl.component(base_image=IMAGES["torch"], packages_to_install=[], install_kfp_package=False)
def dpo_train(
    sft_data: Input[Dataset],
    preferences: Input[Dataset],
    adapter: Output[Model],
    metrics: Output[Metrics],
    settings: dict = {},  # noqa: B006 - KFP needs a literal default
    seed: int = -1,
    method: str = "",
    cache_dir: str = "",
    processes: int = 0,
    accelerators: int = -1,
    accelerator_type: str = "",
):
    """Fine-tunes a LoRA adapter: SFT on the SFT set, then DPO on the preferences.

    The training stage of every method, so not every run has a DPO phase: ``method``
    picks the recipe: optimus (SFT on kept + healed dialogs, then DPO with
    healed over flagged replies), no_dpo and filter (SFT only), fixed_heal (heal with
    ``mode: fixed``, then as optimus). The baselines that train on the original replies
    (no_defense, star_dss) take classify's scored set as ``sft_data``. Checkpoints are kept
    under the cache by a key of inputs and settings, so a retried task resumes.

    Args:
        sft_data: Heal's SFT set (or classify's scored set for no_defense / star_dss).
        preferences: Heal's DPO pairs (read by optimus and fixed_heal only).
        adapter: The PEFT adapter folder (adapter_config.json + safetensors); metadata
            names the base model, method, optimus_lib version and settings digest.
        metrics: Sample and pair counts; first / last loss, steps and throughput of
            each training stage.
        settings: ``TrainSettings``, resolved by the client: ``method`` (optimus, no_dpo,
            fixed_heal, filter, no_defense or star_dss), ``model`` (the chat model to
            fine-tune), ``seed``, ``sft`` and ``dpo`` hyperparameters, ``save_steps``,
            ``checkpoint_root``, ...; a bad value fails the task with one line naming the
            field.
        seed: Set by a loop over arms (the experiment); -1: ``settings.seed``.
        method: Set by a loop over arms (the experiment); empty: ``settings.method``.
        cache_dir: Model cache and checkpoint folder (a mounted PVC on a cluster, so a
            retry resumes); empty: the default.
        processes: Training processes on this node: 0 is one per visible accelerator (1
            without any), above 1 runs one rank per process under torchrun (DDP by
            default, FSDP or ZeRO-3 by ``settings.distributed.strategy``). The global
            batch stays the settings' ``batch_size`` x ``grad_accum``; the metrics give
            processes, per-device batch and accumulation.
        accelerators: The accelerators the pipeline reserved for this task, recorded
            in the adapter's metadata (-1: not said).
        accelerator_type: Their resource name (e.g. nvidia.com/gpu), recorded with them.
    """
    from pathlib import Path

    from optimus_lib.settings import load_settings, loop_values
    from optimus_lib.stages import one_line_errors, use_cache_dir
    from optimus_lib.stages.train import TrainSettings, train_processes

    use_cache_dir(cache_dir)
    with one_line_errors():
        s = load_settings(TrainSettings, settings, **loop_values(seed=seed, method=method))
        result = train_processes(
            s, Path(sft_data.path), Path(adapter.path), Path(preferences.path), processes
        )
    for key, value in result.as_metrics().items():
        metrics.log_metric(key, value)
    upstream = {k: sft_data.metadata[k] for k in ("detector", "source") if k in sft_data.metadata}
    placed = {"accelerators": accelerators} if accelerators >= 0 else {}
    if accelerators > 0 and accelerator_type:
        placed["accelerator_type"] = accelerator_type
    adapter.metadata.update({**result.metadata, **upstream, **placed, "framework": "peft"})
