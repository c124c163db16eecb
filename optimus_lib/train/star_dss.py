"""STAR-DSS baseline ("Shape it Up!", Peng et al., NeurIPS 2025) on TRL + PEFT.

Static defenses keep or drop a whole response. STAR-DSS shapes the loss *inside* a
response instead: a guard model scores growing prefixes of it, chunk by chunk, and each
token gets a safety weight ``w = 1 - toxicity(prefix up to the end of its chunk)``. The
per-token loss is::

    w * CE(token) + (1 - w) * KL(model || reference)

so tokens in a still-safe prefix are imitated as usual, while tokens after the response
turned toxic are not learned: the model is held to the frozen reference's next-token
distribution there (KL) instead. The reference is the base model; with LoRA that is the
same weights with the adapter disabled, so no second copy of the model is loaded.

Token alignment (used by :func:`compute_token_weights` and :func:`train_star_dss`
alike, via :func:`_tokenize_record`): a sample is rendered exactly as TRL's
prompt/completion SFT renders it, i.e. ``apply_chat_template(prompt,
add_generation_prompt=True)`` versus ``apply_chat_template(prompt + completion)``; the
completion tokens are the full sequence after the longest common prefix of the two.
These are the tokens the SFT loss trains on: the reply's own tokens *plus* the
template's end-of-turn tokens (``<|im_end|>``, ``\\n`` for ChatML), which share the last
chunk's weight. Prefixes are decoded back to text with special tokens skipped.

Because the dataset handed to the trainer is pre-tokenized by the same helper, the
weights line up with the trained tokens by construction; TRL then only truncates
(``max_length``, keep-start) and the collator cuts the weights to match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optimus_lib.data.schema import Sample
from optimus_lib.detect.base import Detector
from optimus_lib.errors import OptimusError
from optimus_lib.train.config import SFTConfig
from optimus_lib.train.trainers import (
    StageRun,
    _lora,
    build_sft_records,
    fit,
    prepare,
    sft_args,
)

if TYPE_CHECKING:  # torch and TRL load only when a loss is computed or a model trained
    import torch

WEIGHTS_KEY = "star_weights"
"""Dataset column / batch key holding the per-token safety weights."""

DEFAULT_CHUNK_TOKENS = 5
"""Chunk size of the paper: the guard re-scores the response every 5 tokens."""


# --------------------------------------------------------------------------- weights


def _tokenize_record(record: dict[str, Any], tokenizer) -> tuple[list[int], int]:
    """Token ids of prompt + completion and the prompt length, as TRL's SFT computes them.

    The prompt length is the common prefix of the prompt rendered with the generation
    prompt and of the full conversation (TRL's ``common_prefix_length``), which stays
    right for templates that render the prompt differently when a reply follows.
    """
    prompt_ids = list(
        tokenizer.apply_chat_template(
            record["prompt"], tokenize=True, return_dict=True, add_generation_prompt=True
        )["input_ids"]
    )
    full_ids = list(
        tokenizer.apply_chat_template(
            record["prompt"] + record["completion"], tokenize=True, return_dict=True
        )["input_ids"]
    )
    n = 0
    for a, b in zip(prompt_ids, full_ids):
        if a != b:
            break
        n += 1
    return full_ids, n


def completion_token_ids(samples: list[Sample], tokenizer) -> list[list[int]]:
    """The tokens each sample's response is trained on (the alignment of the weights)."""
    out = []
    for rec in build_sft_records(samples, tokenizer):
        ids, n = _tokenize_record(rec, tokenizer)
        out.append(ids[n:])
    return out


def compute_token_weights(
    samples: list[Sample],
    tokenizer,
    detector: Detector,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> list[list[float]]:
    """STAR safety weights: one float in [0, 1] per completion token of each sample.

    The completion of sample *i* (see the module docstring for the alignment) is cut into
    chunks of ``chunk_tokens``; for chunk *k* the prefix ``completion[:k * chunk_tokens]``
    is decoded to text and scored by ``detector`` *in the sample's context* (toxicity is
    contextual), and every token of chunk *k* gets ``1 - score``. A token's weight thus
    reflects everything said up to and including its chunk, so once a reply turns toxic
    the rest of it is pulled to the reference rather than learned.

    All prefixes of all samples go to ``detector.score`` in one call, so a batched guard
    (the LLM judge) batches them itself; identical prefix texts within a sample (a last
    chunk holding only template tokens) are scored once.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    comps = completion_token_ids(samples, tokenizer)
    keys: dict[tuple[int, str], int] = {}  # (sample, prefix text) -> index into queries
    queries: list[Sample] = []
    chunk_keys: list[list[int]] = []
    for i, (s, ids) in enumerate(zip(samples, comps)):
        per_chunk = []
        for end in range(chunk_tokens, len(ids) + chunk_tokens, chunk_tokens):
            text = tokenizer.decode(ids[:end], skip_special_tokens=True).strip()
            key = (i, text)
            if key not in keys:
                keys[key] = len(queries)
                queries.append(s.with_response(text))
            per_chunk.append(keys[key])
        chunk_keys.append(per_chunk)
    scores = detector.score(queries) if queries else []
    if len(scores) != len(queries):
        raise OptimusError(
            f"detector {detector.name!r} returned {len(scores)} scores for {len(queries)} prefixes"
        )
    for sc in scores:
        if not math.isfinite(sc):
            raise OptimusError(f"detector {detector.name!r} returned a non-finite score ({sc})")
    weights = []
    for ids, per_chunk in zip(comps, chunk_keys):
        w = [1.0 - min(1.0, max(0.0, float(scores[q]))) for q in per_chunk]
        weights.append([w[t // chunk_tokens] for t in range(len(ids))])
    return weights


# --------------------------------------------------------------------------- loss


def star_dss_token_terms(
    logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position cross-entropy and KL(model || reference), in float32.

    ``logits[..., t, :]`` and ``ref_logits[..., t, :]`` are the next-token logits that
    predict ``labels[..., t]`` (already shifted). Returns two tensors of ``labels``'
    shape. The reference is detached: it is a fixed target, never trained.
    """
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    ref_logp = torch.log_softmax(ref_logits.detach().float(), dim=-1)
    ce = -logp.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    kl = (logp.exp() * (logp - ref_logp)).sum(-1)
    return ce, kl


def star_dss_token_loss(
    logits: torch.Tensor,
    ref_logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    mask: torch.Tensor,
    num_items: int | float | torch.Tensor | None = None,
) -> torch.Tensor:
    """sum over masked tokens of ``w * CE + (1 - w) * KL``, divided by the token count.

    Shapes: ``logits``/``ref_logits`` ``(B, T, V)``; ``labels``, ``weights``, ``mask``
    ``(B, T)``, all aligned so that position *t* of the logits predicts ``labels[:, t]``
    (the caller shifts). Only positions where ``mask`` is true count; labels there must
    be real token ids (elsewhere they may be -100). ``num_items`` overrides the
    denominator, e.g. the completion tokens of a whole gradient-accumulation step as
    ``Trainer`` passes it; by default it is ``mask.sum()``. A batch without tokens gives
    a differentiable 0.
    """
    import torch

    sel = mask.bool()
    ce, kl = star_dss_token_terms(logits[sel], ref_logits[sel], labels[sel])
    w = weights[sel].to(ce.dtype)
    per_token = w * ce + (1.0 - w) * kl
    denom = sel.sum() if num_items is None else num_items
    return per_token.sum() / torch.as_tensor(denom, device=per_token.device).clamp(min=1)


# --------------------------------------------------------------------------- trainer


@dataclass
class StarDSSCollator:
    """TRL's LM collator plus the weights, right-padded to the same length as ``labels``.

    Weights arrive untruncated (TRL's preparation truncates only ``input_ids`` and
    ``labels``), so each row is first cut to its ``input_ids`` length (keep-start, like
    TRL's default truncation), then padded with 0 (padding has no label, no loss).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        weights = [list(ex[WEIGHTS_KEY])[: len(ex["input_ids"])] for ex in examples]
        rest = [{k: v for k, v in ex.items() if k != WEIGHTS_KEY} for ex in examples]
        batch = DataCollatorForLanguageModeling(
            pad_token_id=self.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of
        )(rest)
        width = batch["labels"].shape[1]
        padded = torch.zeros((len(weights), width), dtype=torch.float32)
        for i, w in enumerate(weights):
            padded[i, : len(w)] = torch.tensor(w, dtype=torch.float32)
        batch[WEIGHTS_KEY] = padded
        return batch


@lru_cache(maxsize=1)
def star_dss_trainer_class() -> type:
    """:class:`StarDSSTrainer`, defined on first use (it subclasses TRL's SFTTrainer, and
    importing TRL at module import would make every importer pay for torch)."""
    import torch
    from trl import SFTTrainer

    class StarDSSTrainer(SFTTrainer):
        """SFTTrainer whose loss is the STAR-DSS mix of CE and KL to the adapter-free model.

        Needs a PEFT (LoRA) model: the reference forward runs the same model under
        ``disable_adapter()`` without gradients, which is the frozen base model. Expects a
        pre-tokenized dataset with ``input_ids``, ``labels`` (-100 off the completion) and
        ``star_weights`` per token, collated by :class:`StarDSSCollator`.
        """

        _tag_names = ["trl", "sft", "star-dss", "optimus"]

        def _set_signature_columns_if_needed(self) -> None:
            # keep the weights column through Trainer's unused-column removal
            super()._set_signature_columns_if_needed()
            if WEIGHTS_KEY not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, WEIGHTS_KEY]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            inputs = dict(inputs)
            weights = inputs.pop(WEIGHTS_KEY)
            labels = inputs.pop("labels")
            inputs["use_cache"] = False

            peft_model = self.accelerator.unwrap_model(model)
            if not hasattr(peft_model, "disable_adapter"):
                raise OptimusError(
                    "STAR-DSS needs a PEFT model: its reference is the adapter-free base"
                )
            with torch.no_grad(), peft_model.disable_adapter():
                ref_logits = peft_model(**inputs).logits[:, :-1]
            outputs = model(**inputs)
            logits = outputs.logits[:, :-1]

            shift_labels = labels[:, 1:]
            shift_weights = weights[:, 1:]
            mask = shift_labels != -100
            loss = star_dss_token_loss(
                logits, ref_logits, shift_labels, shift_weights, mask, num_items=num_items_in_batch
            )
            # Like SFTTrainer: num_items_in_batch counts every rank's tokens and DDP averages.
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())

            with torch.no_grad():
                ce, kl = star_dss_token_terms(logits[mask], ref_logits[mask], shift_labels[mask])
                n = self.accelerator.gather_for_metrics(mask.sum()).sum().clamp(min=1)
                for name, val in (("ce", ce), ("kl", kl), ("star_weight", shift_weights[mask])):
                    total = self.accelerator.gather_for_metrics(val.float().sum()).sum()
                    self._metrics[mode][name].append((total / n).item())
            return (loss, outputs) if return_outputs else loss

    return StarDSSTrainer


# --------------------------------------------------------------------------- training


def build_star_dss_rows(
    samples: list[Sample], weights: list[list[float]], tokenizer, max_length: int | None = None
) -> list[dict[str, Any]]:
    """Pre-tokenized rows (``input_ids``, ``labels``, ``star_weights``) for the trainer.

    Raises ``OptimusError`` when a weight list does not match its sample's completion
    length, which means the weights came from another tokenizer or another version of
    the samples.
    """
    if len(weights) != len(samples):
        raise OptimusError(f"{len(weights)} weight lists for {len(samples)} samples")
    rows = []
    for s, rec, w in zip(samples, build_sft_records(samples, tokenizer, max_length), weights):
        ids, n = _tokenize_record(rec, tokenizer)
        if len(w) != len(ids) - n:
            raise OptimusError(
                f"sample {s.id!r}: {len(w)} weights but {len(ids) - n} completion tokens; "
                "compute them with compute_token_weights and the trained model's tokenizer"
            )
        if any(not (0.0 <= x <= 1.0) for x in w):
            raise OptimusError(f"sample {s.id!r}: STAR weights must lie in [0, 1]")
        rows.append(
            {
                "input_ids": ids,
                "labels": [-100] * n + ids[n:],
                WEIGHTS_KEY: [0.0] * n + [float(x) for x in w],
            }
        )
    return rows


def build_star_dss_trainer(
    run: StageRun, samples: list[Sample], weights: list[list[float]], cfg: SFTConfig
) -> Any:
    """A ready :class:`StarDSSTrainer` with a fresh LoRA on the base model (not trained yet).

    Separate from :func:`train_star_dss` so tests can check the loss on a real batch.
    """
    from datasets import Dataset

    from optimus_lib.models.specs import load_model

    tok = prepare(run)
    rows = build_star_dss_rows(samples, weights, tok, cfg.max_length)
    return star_dss_trainer_class()(
        model=load_model(run.base, "cpu", run.trust_remote_code),
        args=sft_args(run, cfg),
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=_lora(cfg.lora),
        data_collator=StarDSSCollator(pad_token_id=tok.pad_token_id),
    )


def train_star_dss(
    run: StageRun, samples: list[Sample], weights: list[list[float]], cfg: SFTConfig
) -> Path:
    """LoRA STAR-DSS fine-tuning from the base model; returns ``<run.out>/adapter``.

    ``weights`` come from :func:`compute_token_weights` with the base model's tokenizer.
    Same contract as ``train_sft`` (:func:`optimus_lib.train.trainers.fit`).
    """
    trainer = build_star_dss_trainer(run, samples, weights, cfg)
    flat = [x for w in weights for x in w]
    card = {
        "stage": "STAR-DSS",
        "base model": run.base,
        "reference": "the base model (LoRA adapter disabled)",
        "samples": len(samples),
        "mean token weight": round(sum(flat) / max(1, len(flat)), 4),
        "tokens pulled to the reference (w < 0.5)": sum(x < 0.5 for x in flat),
    }
    return fit(trainer, run, {**card, "settings": cfg.model_dump_json(), "seed": run.seed})
