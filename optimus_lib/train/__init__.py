"""Dual-strategy alignment: LoRA SFT on kept + healed, then DPO healed > flagged (TRL + PEFT).

Submodules import torch/TRL; this package file imports nothing so settings stay light.
"""
