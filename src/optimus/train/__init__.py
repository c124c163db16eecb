"""Stage 3: dual-strategy alignment (LoRA SFT on kept + healed, then DPO healed > flagged)."""

from optimus.train.trainers import build_dpo_pairs, build_sft_records, train_dpo, train_sft

__all__ = ["build_dpo_pairs", "build_sft_records", "train_dpo", "train_sft"]
