"""STAR-DSS baseline: the per-token loss by hand, guard-driven token weights, and a tiny run.

The loss is checked against CE and KL written out with ``math`` on a 3-token, 3-word
vocabulary, so a wrong shift, sign or KL direction in the implementation cannot hide
behind the same code computing the expectation.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import StubDetector

from optimus_lib.data.schema import Sample
from optimus_lib.errors import OptimusError
from optimus_lib.train.config import LoraConfig, SFTConfig
from optimus_lib.train.star_dss import (
    WEIGHTS_KEY,
    StarDSSCollator,
    build_star_dss_rows,
    build_star_dss_trainer,
    completion_token_ids,
    compute_token_weights,
    star_dss_token_loss,
    train_star_dss,
)
from optimus_lib.train.trainers import StageRun

# ---------------------------------------------------------------- loss by hand

LOGITS = [[1.0, 0.0, -1.0], [0.0, 2.0, 0.0], [0.5, 0.5, -1.0]]
REF = [[0.0, 0.0, 0.0], [1.0, 0.0, 3.0], [-1.0, 2.0, 0.0]]
LABELS = [0, 1, 2]


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(x) for x in z]
    return [x / sum(e) for x in e]


def _ce(z: list[float], y: int) -> float:
    return -math.log(_softmax(z)[y])


def _kl(z: list[float], r: list[float]) -> float:
    """KL(p || q) = sum_i p_i log(p_i / q_i), p from the model, q from the reference."""
    p, q = _softmax(z), _softmax(r)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _loss(logits, ref, labels=LABELS, weights=(1.0, 1.0, 1.0), mask=(1, 1, 1), **kw) -> float:
    t = lambda x, dt=torch.float32: torch.tensor([x], dtype=dt)  # noqa: E731
    out = star_dss_token_loss(
        t(logits), t(ref), t(labels, torch.long), t(list(weights)), t(list(mask), torch.bool), **kw
    )
    assert out.dim() == 0
    return out.item()


def test_loss_pure_ce_when_safe():
    expected = sum(_ce(z, y) for z, y in zip(LOGITS, LABELS)) / 3
    assert _loss(LOGITS, REF, weights=(1, 1, 1)) == pytest.approx(expected, rel=1e-5)


def test_loss_pure_kl_when_unsafe():
    expected = sum(_kl(z, r) for z, r in zip(LOGITS, REF)) / 3
    assert expected > 0.1
    assert _loss(LOGITS, REF, weights=(0, 0, 0)) == pytest.approx(expected, rel=1e-5)
    # no pull at all when the model still equals the reference
    assert _loss(LOGITS, LOGITS, weights=(0, 0, 0)) == pytest.approx(0.0, abs=1e-6)


def test_loss_mixed_weights_and_mask():
    ce = [_ce(z, y) for z, y in zip(LOGITS, LABELS)]
    kl = [_kl(z, r) for z, r in zip(LOGITS, REF)]
    w = (1.0, 0.25, 0.0)
    expected = sum(wi * c + (1 - wi) * k for wi, c, k in zip(w, ce, kl)) / 3
    assert _loss(LOGITS, REF, weights=w) == pytest.approx(expected, rel=1e-5)
    # a masked position (label -100, e.g. prompt or padding) neither counts nor divides
    masked = (ce[0] + kl[2]) / 2
    got = _loss(LOGITS, REF, labels=[0, -100, 2], weights=w, mask=(1, 0, 1))
    assert got == pytest.approx(masked, rel=1e-5)
    # the gradient-accumulation denominator overrides the local token count
    got = _loss(LOGITS, REF, labels=[0, -100, 2], weights=w, mask=(1, 0, 1), num_items=4)
    assert got == pytest.approx(masked * 2 / 4, rel=1e-5)
    # nothing to learn: a finite zero
    assert _loss(LOGITS, REF, weights=w, mask=(0, 0, 0)) == 0.0


def test_loss_gradient_reaches_model_not_reference():
    logits = torch.tensor([LOGITS], requires_grad=True)
    ref = torch.tensor([REF], requires_grad=True)
    loss = star_dss_token_loss(
        logits,
        ref,
        torch.tensor([LABELS]),
        torch.tensor([[1.0, 0.5, 0.0]]),
        torch.ones(1, 3, dtype=torch.bool),
    )
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert ref.grad is None


# ---------------------------------------------------------------- token weights

TOXIC = "one two three four five six seven bad nine ten eleven twelve"
CLEAN = "hello there my friend how are you doing today"


def _bad_detector() -> StubDetector:
    return StubDetector(fn=lambda s: 1.0 if "bad" in s.response else 0.0)


@pytest.mark.parametrize("chunk", [5, 3])
def test_weights_drop_from_the_chunk_with_the_bad_word(tiny_tokenizer, chunk):
    samples = [
        Sample(context=["hi", "hey", "tell me a list"], response=TOXIC, id="t"),
        Sample(context=["how are you?"], response=CLEAN, id="c"),
    ]
    det = _bad_detector()
    weights = compute_token_weights(samples, tiny_tokenizer, det, chunk_tokens=chunk)

    assert len(det.calls) == 1  # every prefix of every sample in one batched call
    comps = completion_token_ids(samples, tiny_tokenizer)
    assert [len(w) for w in weights] == [len(c) for c in comps]

    # where "bad" sits in the reply, found independently from the plain tokenization
    resp = tiny_tokenizer(TOXIC, add_special_tokens=False)["input_ids"]
    assert comps[0][: len(resp)] == resp  # the completion starts with the reply's tokens
    bad = next(i for i, t in enumerate(resp) if "bad" in tiny_tokenizer.decode([t]))
    first_zero = (bad // chunk) * chunk
    assert weights[0] == [1.0] * first_zero + [0.0] * (len(comps[0]) - first_zero)
    assert 0 < first_zero < len(comps[0])
    assert weights[1] == [1.0] * len(comps[1])

    # prefixes are judged in their own dialog context and grow chunk by chunk
    scored = det.calls[0]
    toxic_prefixes = [s.response for s in scored if s.context == samples[0].context]
    assert toxic_prefixes[0] == " ".join(TOXIC.split()[:chunk])
    assert toxic_prefixes[-1] == TOXIC
    assert all(a != b and b.startswith(a) for a, b in zip(toxic_prefixes, toxic_prefixes[1:]))
    assert all(s.context == samples[1].context for s in scored if "hello" in s.response)


def test_weights_are_one_minus_score(tiny_tokenizer):
    s = Sample(context=["hi"], response=CLEAN)
    det = StubDetector(fn=lambda _: 0.25)
    (w,) = compute_token_weights([s], tiny_tokenizer, det)
    assert w and all(x == pytest.approx(0.75) for x in w)
    with pytest.raises(ValueError):
        compute_token_weights([s], tiny_tokenizer, det, chunk_tokens=0)


def test_rows_reject_misaligned_weights(tiny_tokenizer):
    s = Sample(context=["hi"], response=CLEAN)
    (w,) = compute_token_weights([s], tiny_tokenizer, _bad_detector())
    (row,) = build_star_dss_rows([s], [w], tiny_tokenizer)
    n_prompt = row["labels"].count(-100)
    assert row[WEIGHTS_KEY] == [0.0] * n_prompt + w
    assert len(row["input_ids"]) == len(row["labels"]) == len(row[WEIGHTS_KEY])
    with pytest.raises(OptimusError, match="completion tokens"):
        build_star_dss_rows([s], [w[:-1]], tiny_tokenizer)
    with pytest.raises(OptimusError):
        build_star_dss_rows([s], [w, w], tiny_tokenizer)
    with pytest.raises(OptimusError, match=r"\[0, 1\]"):
        build_star_dss_rows([s], [[2.0] * len(w)], tiny_tokenizer)


def test_collator_truncates_and_pads_weights_like_labels():
    coll = StarDSSCollator(pad_token_id=0)
    batch = coll(
        [
            # TRL truncated input_ids/labels to 3 but not the weights column
            {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], WEIGHTS_KEY: [0.0, 0.5, 1.0, 1.0]},
            {"input_ids": [8, 9], "labels": [-100, 9], WEIGHTS_KEY: [0.0, 0.25]},
        ]
    )
    assert batch[WEIGHTS_KEY].shape == batch["labels"].shape == (2, 3)
    assert batch[WEIGHTS_KEY].tolist() == [[0.0, 0.5, 1.0], [0.0, 0.25, 0.0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, 9, -100]]


# ---------------------------------------------------------------- training

LONG = " ".join(["fine"] * 70) + " bad"  # cut by max_length=64 mid-reply
CONTEXTS = [["hi there", "hello!", "can you help me?"], ["what's up?"], ["tell me a list"], ["ok"]]
REPLIES = ["Sure, I am happy to help.", TOXIC, "Not much, you?", CLEAN]
LORA = LoraConfig(r=8, alpha=16, dropout=0.0)


def _samples() -> list[Sample]:
    return [
        Sample(context=c, response=r, id=str(i)) for i, (c, r) in enumerate(zip(CONTEXTS, REPLIES))
    ]


def test_compute_loss_on_a_real_batch(tiny_model_dir, tiny_tokenizer, tmp_path):
    """w = 1 is exactly the model's own SFT loss; w = 0 is 0 while LoRA is still a no-op."""
    samples = [*_samples(), Sample(context=["talk"], response=LONG, id="long")]
    weights = compute_token_weights(samples, tiny_tokenizer, _bad_detector())
    assert len(weights[-1]) > 64  # longer than max_length: TRL truncates, the collator follows
    cfg = SFTConfig(batch_size=8, max_length=64, lora=LORA)
    run = StageRun(str(tiny_model_dir), tmp_path, progress=False)
    trainer = build_star_dss_trainer(run, samples, weights, cfg)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape == (5, 64)
    assert batch[WEIGHTS_KEY].shape == batch["labels"].shape
    assert (batch[WEIGHTS_KEY][batch["labels"] == -100] == 0).all()
    assert (batch[WEIGHTS_KEY] == 0).any() and (batch[WEIGHTS_KEY] == 1).any()
    model = trainer.model
    with torch.no_grad():
        ref_ce = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        ).loss.item()
        ones = {**batch, WEIGHTS_KEY: torch.ones_like(batch[WEIGHTS_KEY])}
        zeros = {**batch, WEIGHTS_KEY: torch.zeros_like(batch[WEIGHTS_KEY])}
        assert trainer.compute_loss(model, ones).item() == pytest.approx(ref_ce, rel=1e-4)
        assert trainer.compute_loss(model, zeros).item() == pytest.approx(0.0, abs=1e-5)
        mixed = trainer.compute_loss(model, batch).item()
    assert 0.0 < mixed < ref_ce  # the toxic tail contributes KL = 0 instead of its CE
    assert set(trainer._metrics["train"]) >= {"ce", "kl", "star_weight"}


def test_train_star_dss_writes_adapter(tiny_model_dir, tiny_tokenizer, tmp_path):
    samples = _samples()
    weights = compute_token_weights(samples, tiny_tokenizer, _bad_detector())
    out = tmp_path / "star"
    cfg = SFTConfig(learning_rate=5e-3, epochs=1, batch_size=2, max_length=64, lora=LORA)
    adapter = train_star_dss(
        StageRun(str(tiny_model_dir), out, progress=False), samples, weights, cfg
    )
    assert adapter == out / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8
    assert not (out / "checkpoints").exists() and not (out / "adapter.tmp").exists()
    card = (out / "README.md").read_text()
    assert "STAR-DSS" in card and "adapter disabled" in card
    log = json.loads((out / "train_log.json").read_text())
    assert any(math.isfinite(e.get("train_loss", math.nan)) for e in log)
