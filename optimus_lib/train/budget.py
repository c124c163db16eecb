"""A drift budget for DPO: stop when the policy has moved too far from the SFT model.

How many DPO steps are right depends on what classify and heal produced: 9 pairs at a
weak detector's recall want a few epochs, 60 pairs at full recall reach the same
preference margin sooner and then keep pushing the policy away from fluent chit-chat
(benign perplexity +18.6 % with the budget that was right for 9 pairs). A fixed step
count or learning rate cannot be right at every recall, and the user does not know the
recall. So the budget is measured, not guessed: every ``drift_every`` optimizer steps
the policy's perplexity on a *probe* of benign dialogs is compared with the SFT model's
(the DPO reference, measured before the first step), and training stops once it exceeds
``(1 + drift_budget)`` times that.

The probe is a slice of the training data that DPO never trains on: kept dialogs
(classify did not flag them, heal did not touch them) with the lowest detector scores,
so missed toxic replies are unlikely to be in it. It is never the evaluation set, which
the pipeline keeps apart from training data altogether.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from optimus_lib.data.schema import Sample
from optimus_lib.seeds import record_key


def probe_records(samples: list[Sample], size: int) -> list[Sample]:
    """Up to ``size`` kept dialogs, least toxic-looking first (ties: a stable digest).

    Kept means ``flagged`` is false and the reply is the original (not ``healed``);
    a record without a detector ``score`` counts as 0.5 (neither end).
    """
    kept = [s for s in samples if s.record.get("flagged") is False and not s.record.get("healed")]

    def order(s: Sample) -> tuple[float, str]:
        score = s.record.get("score")
        return (float(score) if isinstance(score, int | float) else 0.5, record_key(s))

    return sorted(kept, key=order)[:size]


def probe_batch(records: list[dict[str, Any]], tokenizer, max_length: int) -> dict[str, Any]:
    """Right-padded ids of prompt + reply with the loss only on the reply tokens.

    ``records`` are SFT records (conversational prompt/completion, as TRL takes them);
    the chat template is the model's own, as in training.
    """
    import torch

    rows, labels = [], []
    for r in records:
        prompt = tokenizer.apply_chat_template(
            r["prompt"], tokenize=False, add_generation_prompt=True
        )
        full = tokenizer.apply_chat_template([*r["prompt"], *r["completion"]], tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        f_ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
        n_prompt = min(len(p_ids), len(f_ids))
        if n_prompt >= len(f_ids):  # nothing of the reply fits: no signal in this row
            continue
        rows.append(f_ids)
        labels.append([-100] * n_prompt + f_ids[n_prompt:])
    if not rows:
        return {}
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, lb) in enumerate(zip(rows, labels)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(lb)] = torch.tensor(lb)
        mask[i, : len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


def probe_perplexity(model, batch: dict[str, Any]) -> float:
    """Token-weighted perplexity of the probe replies under ``model`` (no gradient)."""
    import torch

    if not batch:
        return float("nan")
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    with torch.no_grad():
        ids, mask, lab = (batch[k].to(dev) for k in ("input_ids", "attention_mask", "labels"))
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        tgt = lab[:, 1:]
        keep = tgt != -100
        logp = torch.log_softmax(logits, dim=-1).gather(-1, tgt.clamp(min=0).unsqueeze(-1))
        nll = -(logp.squeeze(-1) * keep).sum() / keep.sum().clamp(min=1)
    if was_training:
        model.train()
    return math.exp(float(nll))


def _trainable(model) -> dict[str, Any]:
    """A CPU copy of the weights training changes (the LoRA adapter's, a few MB)."""
    return {
        n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad
    }


def drift_callback(
    batch: dict[str, Any], budget: float, every: int, log: Path, restore: bool = False
):
    """A transformers TrainerCallback that stops training when probe perplexity exceeds
    ``(1 + budget)`` x the reference's; its measurements go to ``log`` (JSON).

    With ``restore`` the weights go back to the last measurement within the budget (a
    CPU copy of the trainable weights is kept at each one), so the saved adapter is
    inside the budget rather than one check past it: the step that crossed is where
    drift grows fastest. A run resumed from a checkpoint starts its copy there.

    The reference perplexity is measured once, before the first step, and kept in
    ``log``: a run resumed from a checkpoint compares against the SFT model, not
    against the checkpoint it resumed from. Every process computes the same forward
    pass on the same probe (weights are identical under DDP; FSDP needs every rank in
    the forward anyway), so every rank takes the same decision.
    """
    from transformers import TrainerCallback

    class DriftBudget(TrainerCallback):
        def __init__(self) -> None:
            self.state: dict[str, Any] = (
                json.loads(log.read_text()) if log.is_file() else {"history": []}
            )

        def _save(self, args) -> None:
            if args.process_index == 0:
                log.parent.mkdir(parents=True, exist_ok=True)
                tmp = log.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.state, indent=1))
                tmp.replace(log)

        def on_train_begin(self, args, state, control, model=None, **kw):
            if "reference" not in self.state:
                self.state.update(reference=probe_perplexity(model, batch), budget=budget)
                self._save(args)
            if restore:
                self._keep(model, state.global_step)

        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step % every and state.global_step < state.max_steps:
                return
            ppl = probe_perplexity(model, batch)
            drift = ppl / self.state["reference"] - 1.0
            self.state["history"].append({"step": state.global_step, "perplexity": ppl})
            self.state["drift_last"] = drift
            if drift > budget:
                self.state["stopped_at_step"] = state.global_step
                control.should_training_stop = True
                if restore:
                    self._put_back(model)
            elif restore:
                self._keep(model, state.global_step)
            self._save(args)

        def _keep(self, model, step: int) -> None:
            self.kept = _trainable(model)
            self.state["kept_step"] = step

        def _put_back(self, model) -> None:
            import torch

            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in self.kept:
                        p.copy_(self.kept[n].to(p.device, p.dtype))
            self.state["restored_to_step"] = self.state["kept_step"]

    return DriftBudget()


def drift_metrics(log: Path) -> dict[str, float]:
    """What the budget saw, for the train task's metrics (empty when it did not run)."""
    if not log.is_file():
        return {}
    st = json.loads(log.read_text())
    out = {"dpo_probe_reference_ppl": float(st["reference"])}
    if "drift_last" in st:
        out["dpo_probe_drift_last"] = float(st["drift_last"])
    out["dpo_stopped_by_drift"] = float("stopped_at_step" in st)
    if "stopped_at_step" in st:
        out["dpo_stopped_at_step"] = float(st["stopped_at_step"])
    if "restored_to_step" in st:
        out["dpo_restored_to_step"] = float(st["restored_to_step"])
    return out
