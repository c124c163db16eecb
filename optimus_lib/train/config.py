"""Training hyperparameters: LoRA, SFT and DPO (the paper's Stage 3 knobs)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from optimus_lib.settings import Strict


class LoraConfig(Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class SFTConfig(Strict):
    learning_rate: float = Field(2e-4, gt=0.0)
    epochs: float = Field(1.0, gt=0.0)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(128, ge=16)
    lora: LoraConfig = LoraConfig()
    # Recompute activations in the backward pass (TRL's default): saves memory on large
    # models; on a small model on CPU it only costs time (BENCHMARKS.md "SFT (CPU)").
    gradient_checkpointing: bool = True
    # TRL's fused LM head: log-probs projected in vocabulary tiles and recomputed in the
    # backward pass, so the (tokens x vocabulary) logits are never held; it also computes
    # entropy and top-1 accuracy for the logs. That saves GPU memory on long sequences and
    # large vocabularies; on a CPU it is only extra work (a 135M model's step: 6.2 s fused,
    # 4.1-4.7 s with the model's own loss; BENCHMARKS.md "SFT (CPU)"). None: fused on a
    # GPU, the model's own cross-entropy on a CPU. The loss is the same either way.
    fused_lm_head: bool | None = None
    # Mixed precision: bfloat16 matmuls (autocast) over float32 weights and optimizer
    # state. None: on where the device has bf16 kernels (a CUDA GPU that supports it; a
    # CPU whose oneDNN runs bf16, x86 with AVX-512 or ARM with bf16: here 3x fp32's
    # matmul rate, SFT steps 1.4x faster); off elsewhere, where it would be emulated.
    bf16: bool | None = None


class DPOConfig(Strict):
    """DPO from the SFT adapter. ``precompute_ref`` computes the reference log-probs once
    before training (one no-grad pass) instead of at every step: it pays from 2 epochs.

    ``max_steps`` caps the optimizer steps (0: no cap; ``epochs`` alone decides). The
    same per-pair epochs mean many more steps when a strong detector flags many samples,
    and on a small pair set that over-trains: benign perplexity went +17 % / +75 % at
    30 / 60 pairs with the settings that gave +5 % at 9 (BENCHMARKS.md). ``rpo_alpha``
    adds the RPO term, ``rpo_alpha`` x the NLL of the chosen (healed) reply, to the DPO
    loss (TRL ``loss_type=["sigmoid", "sft"]``), which keeps the chosen replies likely
    while the rejected ones are pushed down; 0 is plain DPO.

    ``drift_budget`` stops DPO once the policy's perplexity on a probe of kept benign
    training dialogs (``probe_size`` of them, never trained on by DPO) exceeds
    ``1 + drift_budget`` times the SFT model's, checked every ``drift_every`` steps
    (:mod:`optimus_lib.train.budget`); 0 turns it off. ``drift_restore`` then saves the
    weights of the last check within the budget instead of those of the step that
    crossed it.
    """

    beta: float = Field(0.3, gt=0.0)
    precompute_ref: bool = False
    learning_rate: float = Field(5e-5, gt=0.0)
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int = Field(0, ge=0)
    rpo_alpha: float = Field(0.0, ge=0.0)
    drift_budget: float = Field(0.0, ge=0.0)
    drift_every: int = Field(1, ge=1)
    drift_restore: bool = False
    probe_size: int = Field(16, ge=1)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(128, ge=16)
    lora: LoraConfig = LoraConfig()
    bf16: bool | None = None  # as SFTConfig.bf16
    gradient_checkpointing: bool = True  # as in SFTConfig


class DistributedConfig(Strict):
    """How a training stage runs on several processes (``processes`` > 1 or a TrainJob).

    ``strategy``: ``ddp`` replicates the model and averages LoRA gradients (the default:
    a LoRA run of a model that fits one accelerator); ``fsdp`` shards the base weights,
    gradients and optimizer state across processes (full shard) for a base model that
    does not fit one accelerator; ``zero3`` does the same with DeepSpeed ZeRO-3 and needs
    ``deepspeed`` installed. The batch settings stay global: ``batch_size`` x
    ``grad_accum`` examples per optimizer step on any number of processes.

    ``process_group_timeout_s`` bounds how long a rank waits in a collective for the
    others (a rank that died or hangs then fails the job instead of blocking it forever);
    ``launch_timeout_s`` bounds the whole multi-process run, measured by the launcher.
    """

    strategy: Literal["ddp", "fsdp", "zero3"] = "ddp"
    process_group_timeout_s: int = Field(1800, ge=10)
    launch_timeout_s: int = Field(24 * 3600, ge=10)
