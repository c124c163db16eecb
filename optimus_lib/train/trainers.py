"""SFT and DPO on TRL + PEFT, resumable, and runnable unchanged under ``accelerate launch``.

* SFT uses TRL's conversational prompt/completion format, so the loss is on the
  response only and the model's own chat template is applied by TRL.
* DPO starts from the SFT LoRA adapter. TRL copies it into a frozen ``ref`` adapter on
  the same base weights, so the reference is exactly the SFT model without a second copy
  of the base model in memory (and it works under ZeRO-3, where a separate reference
  model is the well-known pitfall).
* Checkpoints go to ``<out>/checkpoints``; a rerun resumes from the newest one. The
  final adapter is written to a temp folder and renamed, so ``<out>/adapter`` exists
  only when training finished.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from optimus_lib.data.schema import Sample
from optimus_lib.models.text import sanitize
from optimus_lib.train.config import DPOConfig, LoraConfig, SFTConfig


def _special_tokens(tokenizer) -> list[str]:
    return list(dict.fromkeys([*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()]))


def _clean_messages(msgs: list[dict[str, str]], specials: list[str]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": sanitize(m["content"], specials)} for m in msgs]


def _n_tokens(tokenizer, msgs: list[dict[str, str]]) -> int:
    text = tokenizer.apply_chat_template(msgs, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_prompt(
    prompt: list[dict[str, str]], replies: list[str], tokenizer, max_length: int | None
) -> list[dict[str, str]]:
    """Drop the oldest turns (then the head of the last one) so every reply fits whole.

    TRL truncates over-long sequences at the end, which would cut the *response*, the
    only part with a loss. Keeping the most recent context and the whole reply instead
    is what both SFT and DPO need.
    """
    if max_length is None:
        return prompt
    longest = max(replies, key=len)
    msgs = list(prompt)

    def total(m: list[dict[str, str]]) -> int:
        return _n_tokens(tokenizer, [*m, {"role": "assistant", "content": longest}])

    while len(msgs) > 1 and total(msgs) > max_length:
        msgs = msgs[1:]
    over = total(msgs) - max_length
    if over > 0:
        ids = tokenizer(msgs[-1]["content"], add_special_tokens=False)["input_ids"]
        keep = ids[min(len(ids) - 1, over + 2) :] if ids else ids
        msgs[-1] = {**msgs[-1], "content": tokenizer.decode(keep)}
    return msgs


def build_sft_records(
    samples: list[Sample], tokenizer, max_length: int | None = None
) -> list[dict[str, Any]]:
    """Conversational prompt/completion records (TRL masks the prompt from the loss)."""
    sp = _special_tokens(tokenizer)
    out = []
    for s in samples:
        reply = sanitize(s.response, sp)
        prompt = fit_prompt(
            _clean_messages(s.prompt_messages(), sp), [reply], tokenizer, max_length
        )
        out.append({"prompt": prompt, "completion": [{"role": "assistant", "content": reply}]})
    return out


def fit_preferences(
    pairs: list[dict[str, Any]], tokenizer, max_length: int | None = None
) -> list[dict[str, Any]]:
    """TRL conversational preference records (``prompt``/``chosen``/``rejected``) with the
    model's special tokens broken up and the prompt shortened so both replies fit whole.
    Pairs whose two replies are the same teach nothing and are dropped."""
    sp = _special_tokens(tokenizer)
    out = []
    for p in pairs:
        chosen = sanitize(p["chosen"][-1]["content"], sp)
        rejected = sanitize(p["rejected"][-1]["content"], sp)
        if chosen.strip() == rejected.strip():
            continue
        prompt = fit_prompt(
            _clean_messages(p["prompt"], sp), [chosen, rejected], tokenizer, max_length
        )
        out.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    return out


def build_dpo_pairs(
    flagged: list[Sample], healed: list[str], tokenizer, max_length: int | None = None
) -> list[dict[str, Any]]:
    """prompt = context, chosen = healed reply, rejected = the original flagged reply."""
    pairs = [
        {
            "prompt": s.prompt_messages(),
            "chosen": [{"role": "assistant", "content": h}],
            "rejected": [{"role": "assistant", "content": s.response}],
        }
        for s, h in zip(flagged, healed, strict=True)
    ]
    return fit_preferences(pairs, tokenizer, max_length)


@dataclass(frozen=True)
class StageRun:
    """Where and how one training stage (SFT, DPO or STAR-DSS) runs: what every stage
    shares, apart from its data and its hyperparameters.

    ``out`` holds ``checkpoints/`` (a rerun resumes from the newest), then the final
    ``adapter/`` (written atomically), ``train_log.json`` and a small ``README.md``.
    """

    base: str  # the base model spec
    out: Path
    seed: int = 0
    save_steps: int = 25
    trust_remote_code: bool = False
    progress: bool = True
    # With several processes (torchrun / accelerate launch / a TrainJob): how the model is
    # spread (DistributedConfig.strategy) and how long a rank waits for the others.
    strategy: str = "ddp"
    process_group_timeout_s: int = 1800

    def stage(self, name: str) -> StageRun:
        """The same run for another stage, in ``out/<name>``."""
        return replace(self, out=self.out / name)


def _lora(cfg: LoraConfig):
    from peft import LoraConfig as PeftLora

    return PeftLora(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )


def _last_checkpoint(ckpt_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not ckpt_dir.is_dir():
        return None
    return get_last_checkpoint(str(ckpt_dir))


def split_batch(batch_size: int, grad_accum: int, processes: int, stage: str) -> tuple[int, int]:
    """``(per-device batch, accumulation)`` that keep the global batch of the settings,
    ``batch_size x grad_accum`` examples per optimizer step, on ``processes`` processes.

    So a run on 1 and on N processes trains the same recipe (same examples per step,
    same number of steps). The per-device batch is the largest that divides the share
    of each process and does not exceed ``batch_size`` (memory was sized for it).
    """
    total = batch_size * grad_accum
    if total % processes:
        from optimus_lib.errors import OptimusError

        raise OptimusError(
            f"train.{stage}: the global batch (batch_size x grad_accum = {total}) does not "
            f"split over {processes} processes; make it a multiple of {processes}"
        )
    share = total // processes
    per_device = max(d for d in range(1, min(batch_size, share) + 1) if share % d == 0)
    return per_device, share // per_device


def _strategy_args(run: StageRun) -> dict[str, Any]:
    """Trainer arguments of the multi-process strategy (nothing for one process or DDP,
    which Accelerate sets up from the torchrun environment by itself)."""
    from optimus_lib.distributed import world_size

    if world_size() <= 1 or run.strategy == "ddp":
        return {}
    if run.strategy == "fsdp":
        # Full shard of weights, gradients and optimizer state, wrapped per decoder layer
        # (the model's _no_split_modules); CPU-efficient loading so that only rank 0
        # reads the full weights.
        return {
            "fsdp": "full_shard auto_wrap",
            "fsdp_config": {"version": 2, "cpu_ram_efficient_loading": True,
                            "reshard_after_forward": True},
        }  # fmt: skip
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        from optimus_lib.errors import OptimusError

        raise OptimusError(
            "train.distributed.strategy: zero3 needs DeepSpeed (pip install deepspeed); "
            "fsdp shards the model without it"
        )
    return {
        "deepspeed": {
            "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
            "bf16": {"enabled": "auto"},
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
        }
    }


def _common_args(run: StageRun, cfg: SFTConfig | DPOConfig) -> dict[str, Any]:
    """Trainer arguments shared by SFT, DPO and STAR-DSS (constant LR, as in the paper)."""
    from optimus_lib.distributed import world_size

    per_device, accum = split_batch(
        cfg.batch_size, cfg.grad_accum, world_size(), "dpo" if isinstance(cfg, DPOConfig) else "sft"
    )
    return {
        "output_dir": str(run.out / "checkpoints"),
        "learning_rate": cfg.learning_rate,
        "num_train_epochs": cfg.epochs,
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": accum,
        "ddp_timeout": run.process_group_timeout_s,
        **_strategy_args(run),
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "logging_steps": 5,
        "save_strategy": "steps",
        "save_steps": run.save_steps,
        "save_total_limit": 1,
        "report_to": [],
        "seed": run.seed,
        "data_seed": run.seed,
        "dataloader_num_workers": 0,
        "disable_tqdm": not run.progress,
        "bf16": _use_bf16() if cfg.bf16 is None else cfg.bf16,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        # Explicit on CPU-only machines so that several processes under
        # `accelerate launch` form a gloo process group instead of each training alone.
        "use_cpu": not _has_cuda(),
    }


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _use_bf16() -> bool:
    """bf16 autocast by default where the device has bf16 kernels (see ``SFTConfig.bf16``)."""
    from optimus_lib.models.specs import bf16_native

    return bf16_native("cuda" if _has_cuda() else "cpu")


def _check_data(trainer, stage: str, max_length: int) -> None:
    if len(trainer.train_dataset) == 0:
        from optimus_lib.errors import OptimusError

        raise OptimusError(
            f"{stage}: no training example fits max_length={max_length} (raise train.{stage}."
            "max_length)"
        )


# What Trainer.save_model writes next to the adapter that is not part of it: the training
# arguments as a pickle (adapter folders hold safetensors and JSON only; registries copy
# them whole), and each other adapter of the model in a subfolder (TRL's frozen "ref").
_NOT_ADAPTER = ("training_args.bin",)


def _save_adapter(trainer, folder: Path) -> None:
    """Save the trained "default" adapter and the tokenizer; called on every process.

    Trainer.save_model is the Accelerate path: under ZeRO-3 it gathers the partitioned
    parameters and under FSDP the sharded ones (collectives every rank must join), then
    writes on the main process only. Saving from the main process alone would hang on
    those gathers or write one rank's shard. Under FSDP a SHARDED_STATE_DICT setting
    (faster intermediate checkpoints) makes save_model write no weights at all, so the
    final save switches to the full state dict first.
    """
    if getattr(trainer, "is_fsdp_enabled", False):
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(folder))
    if not trainer.accelerator.is_main_process:
        return
    for p in folder.iterdir():
        if p.is_dir():
            shutil.rmtree(p)
        elif p.name in _NOT_ADAPTER:
            p.unlink()
    if not (folder / "adapter_model.safetensors").is_file():
        from optimus_lib.errors import OptimusError

        raise OptimusError(
            f"training finished but no adapter weights were written to {folder} (under "
            "DeepSpeed ZeRO-3 set zero3_save_16bit_model: true in the accelerate config)"
        )


def fit(trainer, run: StageRun, card: dict[str, Any]) -> Path:
    """Train (resuming from the newest checkpoint in ``run.out``), then save the adapter
    atomically (every process joins the save), drop the checkpoints and write a small
    model card; returns the adapter folder. The one ending of every training stage."""
    from optimus_lib.progress import trainer_callback

    out = run.out
    trainer.add_callback(trainer_callback(f"{card['stage']} steps"))
    trainer.train(resume_from_checkpoint=_last_checkpoint(out / "checkpoints"))
    final = out / "adapter"
    tmp = out / "adapter.tmp"
    if trainer.accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    _save_adapter(trainer, tmp)
    if trainer.accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        (out / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        _model_card(out, card)
    trainer.accelerator.wait_for_everyone()
    return final


def _model_card(out: Path, card: dict[str, Any]) -> None:
    lines = [f"# Optimus {card['stage']} adapter", ""]
    lines += [f"- **{k}**: {v}" for k, v in card.items() if k != "stage"]
    lines += [
        "",
        "Made by Optimus (https://github.com/optimus-defense). Load with PEFT:",
        "`PeftModel.from_pretrained(base, this_folder / 'adapter')`.",
    ]
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def prepare(run: StageRun):
    """Output folder and a right-padded tokenizer (what the TRL collators expect)."""
    from optimus_lib.models.specs import load_tokenizer

    run.out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(run.base, run.trust_remote_code)
    tok.padding_side = "right"
    return tok


def sft_args(run: StageRun, cfg: SFTConfig):
    """TRL SFT arguments: loss on the completion only, no packing."""
    from trl import SFTConfig as TrlSFTConfig

    return TrlSFTConfig(
        **_common_args(run, cfg),
        max_length=cfg.max_length,
        completion_only_loss=True,
        packing=False,
    )


def sft_trainer_class(fused_lm_head: bool | None = None) -> type:
    """TRL's SFTTrainer, or (``fused_lm_head`` False; None: False on a CPU) a subclass
    whose loss is the model's own cross-entropy over full logits.

    Both compute the same loss, the summed NLL of the completion tokens over their count
    (``num_items_in_batch``). TRL's fused head exists for GPU memory; on a CPU its tiled
    projection, recomputed in the backward pass, plus the entropy and accuracy it logs,
    cost a third of a small model's step. The subclass logs the loss only.
    """
    from transformers import Trainer
    from trl import SFTTrainer

    fused = _has_cuda() if fused_lm_head is None else fused_lm_head
    if fused:
        return SFTTrainer

    class PlainLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs["use_cache"] = False
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return PlainLossSFTTrainer


def train_sft(run: StageRun, records: list[dict[str, Any]], cfg: SFTConfig) -> Path:
    """LoRA SFT from the base model; returns the adapter folder."""
    from datasets import Dataset

    from optimus_lib.models.specs import load_model

    tok = prepare(run)
    trainer = sft_trainer_class(cfg.fused_lm_head)(
        model=load_model(run.base, "cpu", run.trust_remote_code),
        args=sft_args(run, cfg),
        train_dataset=Dataset.from_list(records),
        processing_class=tok,
        peft_config=_lora(cfg.lora),
    )
    _check_data(trainer, "sft", cfg.max_length)
    card = {"stage": "SFT", "base model": run.base, "samples": len(records)}
    return fit(trainer, run, {**card, "settings": cfg.model_dump_json(), "seed": run.seed})


def dpo_steps(cfg: DPOConfig, n_pairs: int) -> int:
    """Optimizer steps DPO runs: ``epochs`` over ``n_pairs``, capped at ``max_steps``. The
    global batch does not depend on the number of processes (:func:`split_batch`)."""
    per_epoch = max(1, math.ceil(n_pairs / (cfg.batch_size * cfg.grad_accum)))
    steps = max(1, math.ceil(per_epoch * cfg.epochs))
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def dpo_args(run: StageRun, cfg: DPOConfig, n_pairs: int):
    """TRL DPO arguments: sigmoid loss (+ the RPO NLL term on chosen when ``rpo_alpha``),
    and ``max_steps`` set only when the cap binds (otherwise ``epochs`` decide, as before).
    """
    from trl import DPOConfig as TrlDPOConfig

    extra: dict[str, Any] = {}
    if cfg.rpo_alpha > 0:
        extra["loss_type"] = ["sigmoid", "sft"]
        extra["loss_weights"] = [1.0, cfg.rpo_alpha]
    if cfg.max_steps and dpo_steps(cfg, n_pairs) == cfg.max_steps:
        extra["max_steps"] = cfg.max_steps
    return TrlDPOConfig(
        **_common_args(run, cfg),
        beta=cfg.beta,
        max_length=cfg.max_length,
        precompute_ref_log_probs=cfg.precompute_ref,
        precompute_ref_batch_size=max(8, 2 * cfg.batch_size),
        **extra,
    )


def train_dpo(
    run: StageRun,
    sft_adapter: Path,
    pairs: list[dict[str, Any]],
    cfg: DPOConfig,
    probe: list[dict[str, Any]] | None = None,
) -> Path:
    """DPO continuing the SFT adapter, with the frozen SFT adapter as the reference.

    With ``cfg.drift_budget`` and ``probe`` (SFT records of kept dialogs), training stops
    early once the probe's perplexity has drifted past the budget; what it measured is
    kept in ``run.out/probe.json``.
    """
    from datasets import Dataset
    from peft import PeftModel
    from trl import DPOTrainer

    from optimus_lib.models.specs import load_model

    tok = prepare(run)
    base = load_model(run.base, "cpu", run.trust_remote_code)
    callbacks = []
    if cfg.drift_budget > 0 and probe:
        from optimus_lib.train.budget import drift_callback, probe_batch

        batch = probe_batch(probe, tok, cfg.max_length)
        callbacks.append(
            drift_callback(
                batch, cfg.drift_budget, cfg.drift_every, run.out / "probe.json", cfg.drift_restore
            )
        )
    trainer = DPOTrainer(
        model=PeftModel.from_pretrained(base, str(sft_adapter), is_trainable=True),
        ref_model=None,
        args=dpo_args(run, cfg, len(pairs)),
        train_dataset=Dataset.from_list(pairs),
        processing_class=tok,
        callbacks=callbacks or None,
    )
    _check_data(trainer, "dpo", cfg.max_length)
    card = {
        "stage": "DPO",
        "base model": run.base,
        "started from": str(sft_adapter),
        "reference": "frozen copy of the SFT adapter",
        "pairs": len(pairs),
    }
    return fit(trainer, run, {**card, "settings": cfg.model_dump_json(), "seed": run.seed})


def load_trained(
    base_spec: str,
    adapter: Path | None,
    device: str = "auto",
    trust_remote_code: bool = False,
    dtype=None,
):
    """Base model with an adapter merged in (fast inference), or the base alone."""
    from peft import PeftModel

    from optimus_lib.models.specs import load_model

    model = load_model(base_spec, device, trust_remote_code, dtype=dtype)
    if adapter is None:
        return model
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()


def save_merged(base_spec: str, adapter: Path, out: Path, trust_remote_code: bool = False) -> Path:
    """Base + adapter merged and saved as a model folder (safetensors) at ``out``.

    For engines that load weights from disk (vLLM). Merged in float32 on the CPU, so
    the saved weights lose nothing; the engine casts them to its own dtype.
    """
    import torch

    from optimus_lib.models.specs import load_tokenizer

    model = load_trained(base_spec, adapter, "cpu", trust_remote_code, torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    load_tokenizer(base_spec, trust_remote_code).save_pretrained(out)
    return out
