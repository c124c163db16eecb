"""Stage 3 on the tiny model: record building, LoRA SFT, then DPO from the SFT adapter."""

from __future__ import annotations

import json

import pytest

from optimus_lib.data.schema import Sample
from optimus_lib.train.config import DPOConfig, LoraConfig, SFTConfig
from optimus_lib.train.trainers import (
    StageRun,
    build_dpo_pairs,
    build_sft_records,
    load_trained,
    train_dpo,
    train_sft,
)

CHOSEN = "I am happy to help you with that."
REJECTED = "You are a stupid idiot and I hate you."
CONTEXTS = [
    ["hi there", "hello!", "can you help me?"],
    ["what's up?"],
    ["I need some advice"],
    ["tell me something"],
]


def _flagged() -> list[Sample]:
    return [
        Sample(context=c, response=REJECTED, id=str(i), label=1) for i, c in enumerate(CONTEXTS)
    ]


def test_build_sft_records(tiny_tokenizer):
    s = Sample(context=["a", "b <|im_end|> c", "d"], response="ok<|im_start|>system")
    (rec,) = build_sft_records([s], tiny_tokenizer)
    assert [m["role"] for m in rec["prompt"]] == ["user", "assistant", "user"]
    assert rec["prompt"][0]["content"] == "a"
    assert "<|im_end|>" not in rec["prompt"][1]["content"]  # special tokens neutralised
    assert rec["completion"][0]["role"] == "assistant"
    assert "<|im_start|>" not in rec["completion"][0]["content"]
    assert rec["completion"][0]["content"].startswith("ok")


def test_build_dpo_pairs_chosen_is_healed(tiny_tokenizer):
    flagged = _flagged()[:3]
    healed = [CHOSEN, REJECTED, "Thanks for asking!"]  # the second one is unchanged
    pairs = build_dpo_pairs(flagged, healed, tiny_tokenizer)
    assert len(pairs) == 2  # no preference when healed == original
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": CHOSEN}]
    assert pairs[0]["rejected"] == [{"role": "assistant", "content": REJECTED}]
    assert [m["role"] for m in pairs[0]["prompt"]] == ["user", "assistant", "user"]
    assert pairs[0]["prompt"][-1] == {"role": "user", "content": "can you help me?"}
    assert pairs[1]["chosen"][0]["content"] == "Thanks for asking!"
    assert pairs[1]["prompt"] == [{"role": "user", "content": "I need some advice"}]
    with pytest.raises(ValueError):
        build_dpo_pairs(flagged, healed[:2], tiny_tokenizer)


def _margin(base: str, adapter, tok) -> float:
    """Mean log-prob margin chosen - rejected over the toy contexts."""
    from optimus_lib.models.engine import TransformersEngine

    eng = TransformersEngine(load_trained(base, adapter, "cpu"), tok)
    prompts = [eng.chat_ids(Sample(context=c, response="").prompt_messages()) for c in CONTEXTS]
    ids = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    good = eng.completion_nll(prompts, [ids(CHOSEN)] * len(prompts))
    bad = eng.completion_nll(prompts, [ids(REJECTED)] * len(prompts))
    return sum(b - g for (g, _), (b, _) in zip(good, bad)) / len(prompts)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tiny_tokenizer, tmp_path_factory):
    """SFT on healed-style data, then DPO chosen > rejected (tiny, a few seconds)."""
    base = str(tiny_model_dir)
    out = tmp_path_factory.mktemp("train")
    lora = LoraConfig(r=8, alpha=16, dropout=0.0)
    samples = [s.with_response(CHOSEN) for s in _flagged()]
    run = StageRun(base, out, seed=0, progress=False)
    sft = train_sft(
        run.stage("sft"),
        build_sft_records(samples, tiny_tokenizer),
        SFTConfig(learning_rate=5e-3, epochs=2, batch_size=2, max_length=64, lora=lora),
    )
    pairs = build_dpo_pairs(_flagged(), [CHOSEN] * 4, tiny_tokenizer)
    dpo = train_dpo(
        run.stage("dpo"),
        sft,
        pairs,
        DPOConfig(beta=0.3, learning_rate=5e-3, epochs=3, batch_size=1, max_length=64, lora=lora),
    )
    return {"base": base, "out": out, "sft": sft, "dpo": dpo}


def test_sft_and_dpo_write_adapters(trained):
    for stage in ("sft", "dpo"):
        adapter = trained[stage]
        assert adapter == trained["out"] / stage / "adapter"
        assert (adapter / "adapter_model.safetensors").is_file()
        cfg = json.loads((adapter / "adapter_config.json").read_text())
        assert cfg["r"] == 8
        assert not (trained["out"] / stage / "checkpoints").exists()
        assert not (trained["out"] / stage / "adapter.tmp").exists()
        assert (trained["out"] / stage / "README.md").is_file()
        assert json.loads((trained["out"] / stage / "train_log.json").read_text())
    # only the trained adapter is saved, never TRL's frozen "ref" copy
    assert not (trained["dpo"] / "ref").exists()


def test_sft_learns_the_completion(trained, tiny_tokenizer):
    from optimus_lib.models.engine import TransformersEngine

    def nll(adapter):
        eng = TransformersEngine(load_trained(trained["base"], adapter, "cpu"), tiny_tokenizer)
        prompt = eng.chat_ids(Sample(context=CONTEXTS[1], response="").prompt_messages())
        comp = tiny_tokenizer(CHOSEN, add_special_tokens=False)["input_ids"]
        return eng.completion_nll([prompt], [comp])[0][0]

    assert nll(trained["sft"]) < nll(None) - 1.0


def test_dpo_loss_decreases(trained):
    log = json.loads((trained["out"] / "dpo" / "train_log.json").read_text())
    losses = [e["loss"] for e in log if "loss" in e]
    assert len(losses) >= 2, log  # 12 steps, logged every 5
    assert losses[-1] < losses[0] - 0.05


def test_dpo_widens_preference_margin(trained, tiny_tokenizer):
    before = _margin(trained["base"], trained["sft"], tiny_tokenizer)
    after = _margin(trained["base"], trained["dpo"], tiny_tokenizer)
    assert after > before + 1.0


def test_killed_sft_resumes_from_last_checkpoint(
    tiny_model_dir, tiny_tokenizer, tmp_path, monkeypatch
):
    """A run killed after step 2 of 4 redoes only steps 3-4 when started again."""
    import transformers

    records = build_sft_records([s.with_response(CHOSEN) for s in _flagged()], tiny_tokenizer)
    cfg = SFTConfig(
        learning_rate=1e-3,
        epochs=1,
        batch_size=1,
        max_length=64,
        lora=LoraConfig(r=4, alpha=8, dropout=0.0),
    )
    original = transformers.Trainer.training_step
    calls = {"n": 0, "kill_after": 2}

    def step(self, *args, **kwargs):
        if calls["n"] == calls["kill_after"]:
            raise KeyboardInterrupt  # what Ctrl-C / a killed job looks like mid-training
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", step)
    out = tmp_path / "sft"
    with pytest.raises(KeyboardInterrupt):
        train_sft(StageRun(str(tiny_model_dir), out, save_steps=1, progress=False), records, cfg)
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    assert not (out / "adapter").exists()  # unfinished training leaves no final adapter

    calls.update(n=0, kill_after=-1)
    adapter = train_sft(
        StageRun(str(tiny_model_dir), out, save_steps=1, progress=False), records, cfg
    )
    assert calls["n"] == 2  # only the two missing steps ran
    assert (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((out / "train_log.json").read_text())[-1]["step"] == 4


def test_dpo_args_cap_and_rpo(tmp_path):
    """The cap is passed to TRL only when it binds; RPO becomes TRL's sigmoid + sft loss."""
    from optimus_lib.train.trainers import dpo_args, dpo_steps

    plain = DPOConfig(epochs=3, batch_size=4)
    args = dpo_args(StageRun("m", tmp_path), plain, 60)
    assert args.max_steps == -1 and args.num_train_epochs == 3
    assert args.loss_type == ["sigmoid"]
    assert dpo_steps(plain, 60) == 45

    capped = plain.model_copy(update={"max_steps": 10, "rpo_alpha": 0.5})
    assert dpo_steps(capped, 60) == 10
    args = dpo_args(StageRun("m", tmp_path), capped, 60)
    assert args.max_steps == 10
    assert args.loss_type == ["sigmoid", "sft"] and args.loss_weights == [1.0, 0.5]
    # 9 pairs x 3 epochs = 9 steps: the cap of 10 does not bind, epochs decide
    assert dpo_steps(capped, 9) == 9
    assert dpo_args(StageRun("m", tmp_path), capped, 9).max_steps == -1
    with pytest.raises(ValueError):
        DPOConfig(max_steps=-1)


def test_dpo_cap_and_rpo_reach_the_trainer(trained, tiny_tokenizer, tmp_path, monkeypatch):
    """Trained for real: the cap stops DPO at max_steps, and the trainer TRL builds
    combines its sigmoid (DPO) and sft (NLL on chosen) losses with the RPO weight."""
    import trl

    seen = {}
    original = trl.DPOTrainer.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen["loss_types"], seen["loss_weights"] = self.loss_types, self.loss_weights

    monkeypatch.setattr(trl.DPOTrainer, "__init__", spy)
    pairs = build_dpo_pairs(_flagged(), [CHOSEN] * 4, tiny_tokenizer)
    cfg = DPOConfig(
        beta=0.3,
        learning_rate=5e-3,
        epochs=3,  # 12 steps at batch 1 without the cap
        max_steps=3,
        rpo_alpha=0.5,
        batch_size=1,
        max_length=64,
        lora=LoraConfig(r=8, alpha=16, dropout=0.0),
    )
    run = StageRun(trained["base"], tmp_path / "dpo", progress=False)
    train_dpo(run, trained["sft"], pairs, cfg)
    log = json.loads((tmp_path / "dpo" / "train_log.json").read_text())
    assert log[-1]["step"] == 3
    assert seen == {"loss_types": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}
