"""Any Hugging Face sequence-classification toxicity model, by hub id or local path.

Not used by the defaults (no such model ships offline), but the usual thing a team
already has: e.g. ``hf-classifier`` with ``--model unitary/toxic-bert`` when online.
"""

from __future__ import annotations

import torch

from optimus_lib.data.schema import Sample
from optimus_lib.detect.base import Detector, DetectorOptions, register
from optimus_lib.errors import OptimusError

_TOXIC_WORDS = ("toxic", "unsafe", "offensive", "hate", "abusive", "harm")


class HFClassifierDetector(Detector):
    def __init__(
        self, spec: str, device: str = "auto", batch_size: int = 32, trust_remote_code: bool = False
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from optimus_lib.models.specs import pick_device, resolve_model

        path, revision = resolve_model(spec)
        try:
            self.tok = AutoTokenizer.from_pretrained(
                path, revision=revision, trust_remote_code=trust_remote_code
            )
            self.model = AutoModelForSequenceClassification.from_pretrained(
                path,
                revision=revision,
                use_safetensors=True,
                trust_remote_code=trust_remote_code,
            )
        except OSError as exc:
            raise OptimusError(
                f"cannot load classifier {spec!r}: {str(exc).splitlines()[0]}"
            ) from None
        self.model.to(pick_device(device)).eval()
        self.batch_size = batch_size
        self.name = f"hf-classifier({spec})"
        labels = {int(k): str(v).lower() for k, v in self.model.config.id2label.items()}
        toxic = [i for i, v in labels.items() if any(w in v for w in _TOXIC_WORDS)]
        self.toxic_idx = toxic or [max(labels)]
        self.multi_label = self.model.config.problem_type == "multi_label_classification"

    @torch.inference_mode()
    def score(self, samples: list[Sample]) -> list[float]:
        out: list[float] = []
        dev = next(self.model.parameters()).device
        for i in range(0, len(samples), self.batch_size):
            chunk = samples[i : i + self.batch_size]
            enc = self.tok(
                [s.context[-1] for s in chunk],
                [s.response for s in chunk],
                truncation="only_first",
                max_length=512,
                padding=True,
                return_tensors="pt",
            ).to(dev)
            logits = self.model(**enc).logits.float()
            if self.multi_label or logits.shape[-1] == 1:
                probs = torch.sigmoid(logits)[:, self.toxic_idx].max(-1).values
            else:
                probs = torch.softmax(logits, -1)[:, self.toxic_idx].sum(-1)
            out.extend(probs.cpu().tolist())
        return out


@register("hf-classifier")
def _build(opts: DetectorOptions) -> Detector:
    if not opts.model:
        raise OptimusError("the 'hf-classifier' detector needs a model (--model ID_OR_PATH)")
    return HFClassifierDetector(opts.model, opts.device, opts.batch_size, opts.trust_remote_code)
