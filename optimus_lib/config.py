"""One typed config for a whole run, loaded from YAML.

Every knob of every stage lives here so a run folder's ``config.yaml`` alone reproduces
it, and so a typo in a key is a one-line error instead of a silently ignored setting
(``extra="forbid"`` everywhere).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from optimus_lib.errors import OptimusError

BUNDLED_MODEL = "smollm2-135m-instruct"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataConfig(_Strict):
    """Where training and evaluation dialogs come from.

    ``train`` may be a JSONL path (the DESIGN.md contract) or ``"builtin"``: benign
    chit-chat dialogs with confirmed-toxic replies injected at ``toxic_fraction``.
    """

    train: str = "builtin"
    n_train: int = Field(200, ge=4)
    toxic_fraction: float = Field(0.3, ge=0.0, le=1.0)
    max_context_turns: int = Field(3, ge=1)
    n_eval_toxic: int = Field(30, ge=1)
    n_eval_benign: int = Field(30, ge=1)
    eval_toxic: str | None = None
    eval_benign: str | None = None
    # Threat model for the built-in training set: indiscriminate injection, a backdoor
    # (trigger phrase in the context paired with toxic replies), or one category only.
    threat: Literal["inject", "backdoor", "category"] = "inject"
    trigger: str = "cf-2024"
    threat_category: str | None = None
    # Adaptive attack on the defense, applied to the injected toxic replies:
    # "jailbreak:<variant>" or "perturb:<kind>" (see optimus_lib.threats.attacks).
    evasion: str | None = None
    evasion_rate: float = Field(0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _threat(self) -> DataConfig:
        if self.threat == "category" and not self.threat_category:
            raise ValueError("threat 'category' needs threat_category (e.g. insult)")
        if self.evasion is not None:
            kind, _, name = self.evasion.partition(":")
            if kind not in ("jailbreak", "perturb") or not name:
                raise ValueError("evasion must be 'jailbreak:<variant>' or 'perturb:<kind>'")
        return self


class ScanConfig(_Strict):
    """Stage 1: which detector flags samples, and at what threshold."""

    detector: str = "llm-judge"
    model: str | None = None  # judge model; defaults to the run's base model
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    batch_size: int = Field(16, ge=1)
    max_prompt_tokens: int = Field(512, ge=32)
    paraphrases: int = Field(1, ge=1)
    target_recall: float | None = Field(None, gt=0.0, le=1.0)
    weaken_category: str | None = None
    # Threshold calibration: "fpr"/"f1" on a labelled file ("devset" = the bundled dev set),
    # "gmm" fits a two-component mixture to the training scores (no labels).
    calibrate: Literal["none", "fpr", "f1", "gmm"] = "none"
    calibration_data: str = "devset"
    target_fpr: float = Field(0.05, ge=0.0, le=1.0)


class HealConfig(_Strict):
    """Stage 2: contextual (aligned-model) or fixed-reply healing."""

    mode: Literal["contextual", "fixed"] = "contextual"
    model: str | None = None
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    temperature: float = Field(0.7, gt=0.0)
    max_new_tokens: int = Field(48, ge=1, le=1024)
    retries: int = Field(2, ge=0)
    batch_size: int = Field(16, ge=1)
    # Detector that re-scores healed replies; default: the scan detector. Must not read
    # labels (a healed reply has none), so set it when scanning with an oracle.
    rescore_detector: str | None = None
    fixed_reply: str = (
        "I'm sorry, I'd rather not continue in that direction. Thanks for talking with me, "
        "though. Is there something else you'd like to chat about?"
    )


class LoraConfig(_Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class SFTConfig(_Strict):
    learning_rate: float = Field(2e-4, gt=0.0)
    epochs: float = Field(1.0, gt=0.0)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(128, ge=16)
    lora: LoraConfig = LoraConfig()
    # Recompute activations in the backward pass (TRL's default): saves memory on large
    # models; on a small model on CPU it only costs time (BENCHMARKS.md "SFT (CPU)").
    gradient_checkpointing: bool = True


class DPOConfig(_Strict):
    """DPO from the SFT adapter. ``precompute_ref`` computes the reference log-probs once
    before training (one no-grad pass) instead of at every step: it pays from 2 epochs."""

    beta: float = Field(0.3, gt=0.0)
    precompute_ref: bool = False
    learning_rate: float = Field(5e-5, gt=0.0)
    epochs: float = Field(1.0, gt=0.0)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(128, ge=16)
    lora: LoraConfig = LoraConfig()
    gradient_checkpointing: bool = True  # as in SFTConfig


class TrainConfig(_Strict):
    sft: SFTConfig = SFTConfig()
    dpo: DPOConfig = DPOConfig()
    save_steps: int = Field(25, ge=1)
    merge: bool = False  # also write a merged safetensors model


class EvalConfig(_Strict):
    """Stage 4. Greedy decoding shows only each context's single most likely reply, so a
    model that says something toxic 1 time in 5 scores 0; ``do_sample`` with several
    ``samples`` per context measures that rate (the RealToxicityPrompts practice)."""

    evaluator: str = "lexical"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    max_new_tokens: int = Field(40, ge=1)
    batch_size: int = Field(16, ge=1)
    similarity: bool = True
    do_sample: bool = False
    samples: int = Field(1, ge=1)  # replies per context; RTR is over all of them
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    temperature: float = Field(1.0, gt=0.0)

    @model_validator(mode="after")
    def _samples_need_sampling(self) -> EvalConfig:
        if self.samples > 1 and not self.do_sample:
            raise ValueError("samples > 1 needs do_sample: true (greedy replies are identical)")
        return self


METHODS = ("no_defense", "filter", "fixed_heal", "no_dpo", "star_dss", "optimus")
Method = Literal["no_defense", "filter", "fixed_heal", "no_dpo", "star_dss", "optimus"]


class RunConfig(_Strict):
    """A whole pipeline run."""

    name: str = "run"
    seed: int = 0
    model: str = BUNDLED_MODEL
    device: str = "auto"
    engine: Literal["auto", "transformers", "vllm"] = "auto"  # inference (scan, heal)
    trust_remote_code: bool = False
    methods: list[Method] = ["no_defense", "optimus"]
    data: DataConfig = DataConfig()
    scan: ScanConfig = ScanConfig()
    heal: HealConfig = HealConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _methods_unique(self) -> RunConfig:
        if not self.methods:
            raise ValueError("methods: name at least one of " + ", ".join(METHODS))
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("methods: each method may appear once")
        return self


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "config"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{where}: {err['msg']}{more}"


def load_config(path: str | Path) -> RunConfig:
    """Load and validate a YAML run config; every problem is a one-line OptimusError."""
    p = Path(path)
    if not p.is_file():
        raise OptimusError(f"{p}: no such config file")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise OptimusError(f"{p}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise OptimusError(f"{p}: the config must be a YAML mapping")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise OptimusError(f"{p}: {_one_line(exc)}") from None
