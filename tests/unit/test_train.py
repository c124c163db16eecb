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


def _tiny_sft(**kw) -> SFTConfig:
    """The small SFT of the single-stage tests: lr 1e-3, rank-4 LoRA without dropout."""
    return SFTConfig(
        learning_rate=1e-3, max_length=64, lora=LoraConfig(r=4, alpha=8, dropout=0.0), **kw
    )


def test_killed_sft_resumes_from_last_checkpoint(
    tiny_model_dir, tiny_tokenizer, tmp_path, monkeypatch
):
    """A run killed after step 2 of 4 redoes only steps 3-4 when started again."""
    import transformers

    records = build_sft_records([s.with_response(CHOSEN) for s in _flagged()], tiny_tokenizer)
    cfg = _tiny_sft(epochs=1, batch_size=1)
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


def test_plain_loss_sft_trains_what_the_fused_head_trains(tiny_model_dir, tiny_tokenizer, tmp_path):
    """The CPU default (the model's own cross-entropy) and TRL's fused LM head give the
    same losses and the same adapter: only the speed differs."""
    from safetensors.torch import load_file

    from optimus_lib.train.trainers import sft_trainer_class

    assert sft_trainer_class(True).__name__ == "SFTTrainer"
    assert sft_trainer_class(None).__name__ == "PlainLossSFTTrainer"  # no CUDA here
    records = build_sft_records([s.with_response(CHOSEN) for s in _flagged()], tiny_tokenizer)
    out = {}
    for fused in (True, False):
        # bf16 off: the comparison is exact in fp32
        cfg = _tiny_sft(epochs=2, batch_size=2, fused_lm_head=fused, bf16=False)
        run = StageRun(str(tiny_model_dir), tmp_path / str(fused), save_steps=100, progress=False)
        adapter = train_sft(run, records, cfg)
        log = json.loads((run.out / "train_log.json").read_text())
        out[fused] = (
            [e["loss"] for e in log if "loss" in e] + [log[-1]["train_loss"]],
            load_file(adapter / "adapter_model.safetensors"),
        )
    assert out[True][0] == pytest.approx(out[False][0], rel=1e-4)
    for name, w in out[True][1].items():
        assert (w - out[False][1][name]).abs().max() < 1e-4, name


def test_bf16_follows_the_setting_else_the_device(tmp_path, monkeypatch):
    """``bf16`` True/False is what the Trainer gets; None asks the device."""
    from optimus_lib.models import specs
    from optimus_lib.train.trainers import sft_args

    run = StageRun("unused", tmp_path, progress=False)
    assert sft_args(run, SFTConfig(bf16=False)).bf16 is False
    for native in (True, False):
        monkeypatch.setattr(specs, "bf16_native", lambda device, native=native: native)
        assert sft_args(run, SFTConfig()).bf16 is native
    assert specs.bf16_native("mps") is False


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


# ---- the DPO drift budget ---------------------------------------------------------------
PROBE = [
    Sample(context=["how was your weekend?"], response="Lovely, we went hiking.", id="p1"),
    Sample(context=["any plans tonight?"], response="Just a quiet dinner at home.", id="p2"),
]


def _budget_cfg(**kw) -> DPOConfig:
    lora = LoraConfig(r=8, alpha=16, dropout=0.0)
    base = {"beta": 0.3, "learning_rate": 5e-3, "epochs": 2, "batch_size": 1, "max_length": 64}
    return DPOConfig(**base, lora=lora, **kw)  # 8 steps on the 4 pairs


def test_probe_records_are_kept_dialogs_least_toxic_first():
    from optimus_lib.train.budget import probe_records

    def s(i, flagged, healed=False, score=None):
        rec = {
            "flagged": flagged,
            "healed": healed,
            **({"score": score} if score is not None else {}),
        }
        return Sample(["hi"], f"r{i}", id=str(i), record=rec)

    pool = [s(0, True, score=0.9), s(1, False, score=0.4), s(2, False, True, 0.0),
            s(3, False, score=0.1), s(4, False), s(5, False, score=0.3)]  # fmt: skip
    assert [x.id for x in probe_records(pool, 3)] == ["3", "5", "1"]
    assert [x.id for x in probe_records(pool, 10)] == ["3", "5", "1", "4"]


def test_probe_perplexity_matches_the_engine(trained, tiny_tokenizer):
    from optimus_lib.models.engine import TransformersEngine, perplexity
    from optimus_lib.train.budget import probe_batch, probe_perplexity

    model = load_trained(trained["base"], trained["sft"], "cpu")
    batch = probe_batch(build_sft_records(PROBE, tiny_tokenizer), tiny_tokenizer, 64)
    eng = TransformersEngine(model, tiny_tokenizer)
    prompts = [eng.chat_ids(p.prompt_messages()) for p in PROBE]
    full = [eng.chat_ids(p.messages(), add_generation_prompt=False) for p in PROBE]
    nll = eng.completion_nll(prompts, [f[len(p) :] for p, f in zip(prompts, full)])
    assert probe_perplexity(model, batch) == pytest.approx(perplexity(nll), rel=1e-4)


def test_drift_budget_stops_dpo_at_the_first_step_over_budget(
    trained, tiny_tokenizer, tmp_path, monkeypatch
):
    """Real DPO; the probe's perplexities are scripted (10 at the reference, then +5 %
    a step), so a 12 % budget must stop training at step 3 with drift 0.15."""
    from optimus_lib.train import budget

    script = iter([10.0, 10.5, 11.0, 11.5, 12.0, 12.5, 13.0, 13.5, 14.0])
    monkeypatch.setattr(budget, "probe_perplexity", lambda model, batch: next(script))
    pairs = build_dpo_pairs(_flagged(), [CHOSEN] * 4, tiny_tokenizer)
    run = StageRun(trained["base"], tmp_path / "dpo", progress=False)
    probe = build_sft_records(PROBE, tiny_tokenizer)
    train_dpo(run, trained["sft"], pairs, _budget_cfg(drift_budget=0.12), probe)
    log = json.loads((tmp_path / "dpo" / "train_log.json").read_text())
    seen = json.loads((tmp_path / "dpo" / "probe.json").read_text())
    assert max(h.get("step", 0) for h in log) == 3
    assert seen["reference"] == 10.0 and seen["stopped_at_step"] == 3
    assert seen["drift_last"] == pytest.approx(0.15)
    assert (tmp_path / "dpo" / "adapter" / "adapter_model.safetensors").is_file()
    m = budget.drift_metrics(tmp_path / "dpo" / "probe.json")
    assert m["dpo_stopped_by_drift"] == 1.0 and m["dpo_stopped_at_step"] == 3.0


def test_drift_restore_saves_the_last_weights_within_the_budget(
    trained, tiny_tokenizer, tmp_path, monkeypatch
):
    """Scripted probe: steps 1 and 2 are within a 12 % budget, step 3 is not. With
    ``drift_restore`` the saved adapter is the one a 2-step run saves, tensor for tensor;
    without it, it is not."""
    import torch
    from safetensors.torch import load_file

    from optimus_lib.train import budget

    pairs = build_dpo_pairs(_flagged(), [CHOSEN] * 4, tiny_tokenizer)
    probe = build_sft_records(PROBE, tiny_tokenizer)

    def dpo(name: str, **kw) -> dict:
        script = iter([10.0, 10.5, 11.0, 12.0, 13.0])
        monkeypatch.setattr(budget, "probe_perplexity", lambda model, batch: next(script))
        run = StageRun(trained["base"], tmp_path / name, progress=False)
        out = train_dpo(run, trained["sft"], pairs, _budget_cfg(**kw), probe)
        return load_file(str(out / "adapter_model.safetensors"))

    two = dpo("two", max_steps=2)
    kept = dpo("kept", drift_budget=0.12, drift_restore=True)
    crossed = dpo("crossed", drift_budget=0.12)
    assert two.keys() == kept.keys()
    assert all(torch.equal(two[k], kept[k]) for k in two)
    assert not all(torch.equal(two[k], crossed[k]) for k in two)
    seen = json.loads((tmp_path / "kept" / "probe.json").read_text())
    assert seen["stopped_at_step"] == 3 and seen["restored_to_step"] == 2
    assert budget.drift_metrics(tmp_path / "kept" / "probe.json")["dpo_restored_to_step"] == 2.0


def test_drift_budget_measures_every_step_and_lets_a_calm_run_finish(
    trained, tiny_tokenizer, tmp_path
):
    """A budget far above the drift: all 8 steps run, each is measured, and the reference
    is the SFT model's own probe perplexity."""
    from optimus_lib.train.budget import probe_batch, probe_perplexity

    pairs = build_dpo_pairs(_flagged(), [CHOSEN] * 4, tiny_tokenizer)
    probe = build_sft_records(PROBE, tiny_tokenizer)
    run = StageRun(trained["base"], tmp_path / "dpo", progress=False)
    train_dpo(run, trained["sft"], pairs, _budget_cfg(drift_budget=100.0, drift_every=2), probe)
    seen = json.loads((tmp_path / "dpo" / "probe.json").read_text())
    assert [h["step"] for h in seen["history"]] == [2, 4, 6, 8]
    assert "stopped_at_step" not in seen
    sft = load_trained(trained["base"], trained["sft"], "cpu")
    ref = probe_perplexity(sft, probe_batch(probe, tiny_tokenizer, 64))
    assert seen["reference"] == pytest.approx(ref, rel=1e-4)
    assert seen["history"][-1]["perplexity"] != pytest.approx(ref, rel=1e-6)  # it trained


def test_global_batch_split_and_strategy_arguments(monkeypatch):
    """The settings' batch is global: split over processes (largest per-device batch up to
    batch_size), refused with one line when it cannot split; FSDP full-shard and ZeRO-3
    (only with DeepSpeed installed) as Trainer arguments above one process."""
    import importlib.util
    from pathlib import Path

    from optimus_lib.errors import OptimusError
    from optimus_lib.train.trainers import StageRun, _strategy_args, split_batch

    assert split_batch(4, 1, 1, "sft") == (4, 1)
    assert split_batch(4, 1, 2, "sft") == (2, 1)
    assert split_batch(4, 2, 8, "sft") == (1, 1)
    assert split_batch(1, 4, 2, "dpo") == (1, 2)
    with pytest.raises(OptimusError, match=r"train.sft: the global batch .* = 6\) does not"):
        split_batch(6, 1, 4, "sft")
    run = StageRun("m", Path("/tmp/x"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert _strategy_args(StageRun("m", Path("/x"), strategy="fsdp")) == {}  # one process
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _strategy_args(run) == {}  # DDP: Accelerate sets it up from torchrun's env
    fsdp = _strategy_args(StageRun("m", Path("/x"), strategy="fsdp"))
    assert fsdp["fsdp"] == "full_shard auto_wrap" and fsdp["fsdp_config"]["version"] == 2
    zero3 = StageRun("m", Path("/x"), strategy="zero3")
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(OptimusError, match="zero3 needs DeepSpeed"):
            _strategy_args(zero3)
    else:
        assert _strategy_args(zero3)["deepspeed"]["zero_optimization"]["stage"] == 3
