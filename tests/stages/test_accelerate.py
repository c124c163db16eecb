"""`optimus train` (the train stage) runs unchanged under `accelerate launch` on 2 CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.slow  # several processes (accelerate launch)

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_train_under_accelerate_launch_two_cpu_processes(tmp_path, tiny_model_dir):
    msgs = [
        ("hi, how are you?", "great thanks, and you?", "you are a worthless idiot"),
        ("any plans today?", "just reading a book", "shut up loser"),
        ("I like dogs", "dogs are the best!", "dogs are for morons"),
        ("what's up", "not much, you?", "none of your business, jerk"),
    ]
    sft = [{"id": str(i), "context": [u], "response": good} for i, (u, good, _) in enumerate(msgs)]
    prefs = [
        {
            "prompt": [{"role": "user", "content": u}],
            "chosen": [{"role": "assistant", "content": good}],
            "rejected": [{"role": "assistant", "content": bad}],
        }
        for u, good, bad in msgs
    ]
    _write(tmp_path / "sft.jsonl", sft)
    _write(tmp_path / "dpo.jsonl", prefs)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(  # a pipeline settings file: `optimus train` reads its train section
        f"model: {tiny_model_dir}\ntrain:\n  checkpoint_root: {tmp_path / 'ckpt'}\n"
        "  sft: {batch_size: 2, max_length: 48, epochs: 1}\n"
        "  dpo: {batch_size: 2, max_length: 48, epochs: 1}\n"
    )
    out = tmp_path / "adapters"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    accelerate = Path(sys.executable).parent / "accelerate"
    proc = subprocess.run(
        [
            str(accelerate),
            "launch",
            "--config_file",
            str(ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"),
            "-m",
            "cli",
            "train",
            str(tmp_path / "sft.jsonl"),
            "--preferences",
            str(tmp_path / "dpo.jsonl"),
            "--settings",
            str(cfg),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "adapter_model.safetensors").is_file()  # the published DPO adapter
    (run,) = (tmp_path / "ckpt").iterdir()  # one content key
    for stage in ("sft", "dpo"):
        assert (run / stage / "adapter" / "adapter_model.safetensors").is_file()
        log = json.loads((run / stage / "train_log.json").read_text())
        # 4 examples, global batch 2 (1 per process) -> 2 optimizer steps per epoch
        assert log[-1]["step"] == 2, log[-1]
    assert not (run / "sft" / "checkpoints").exists()


# Runs under `accelerate launch`: SFT through train_sft, then each rank dumps the LoRA
# weights it holds in memory after the final save, and the ranks that called save_model.
_SFT_SCRIPT = """
import json, sys
from pathlib import Path

import transformers
from peft import get_peft_model_state_dict
from safetensors.torch import save_file

import optimus_lib.train.trainers as T
from optimus_lib.train.config import LoraConfig, SFTConfig


base, out = sys.argv[1], Path(sys.argv[2])
real_save, real_fit = transformers.Trainer.save_model, T.fit


def save_model(self, *a, **kw):
    (out / f"saved_by_rank{self.accelerator.process_index}").touch()
    return real_save(self, *a, **kw)


def fit(trainer, run, card):
    path = real_fit(trainer, run, card)
    acc = trainer.accelerator
    model = acc.unwrap_model(trainer.model)
    weights = get_peft_model_state_dict(model, adapter_name="default")
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()},
              str(out / f"memory.rank{acc.process_index}.safetensors"))
    meta = {"world": acc.num_processes, "type": str(acc.distributed_type),
            "step": trainer.state.global_step}
    (out / f"meta.rank{acc.process_index}.json").write_text(json.dumps(meta))
    return path


transformers.Trainer.save_model, T.fit = save_model, fit
turns = [("hi, how are you?", "great thanks"), ("any plans today?", "reading a book"),
         ("I like dogs", "dogs are the best"), ("what's up", "not much, you?")]
records = [{"prompt": [{"role": "user", "content": u}],
            "completion": [{"role": "assistant", "content": a}]} for u, a in turns]
cfg = SFTConfig(learning_rate=5e-3, epochs=1, batch_size=2, max_length=48,
                lora=LoraConfig(r=4, alpha=8, dropout=0.0))
T.train_sft(T.StageRun(base, out / "sft", seed=0, progress=False), records, cfg)
"""


def test_sft_save_joins_every_process_and_matches_memory(tmp_path, tiny_model_dir):
    """Two CPU processes (DDP over gloo): every rank goes through Trainer.save_model (the
    path that gathers under FSDP / ZeRO-3), rank 0 writes, and the saved adapter loads
    with exactly the LoRA weights both ranks hold in memory.

    FSDP itself is not exercised here: Accelerate 1.15 turns FSDP on only for
    multi-accelerator runs (MULTI_GPU/NPU/XPU/...; AcceleratorState never selects it for
    MULTI_CPU), and the trainers set use_cpu without CUDA, so on CPU an FSDP config
    silently trains as DDP. The FSDP-specific step (full state dict before the save) is
    covered by the unit test below.
    """
    import torch
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    script = tmp_path / "sft_ddp.py"
    script.write_text(_SFT_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    accelerate = Path(sys.executable).parent / "accelerate"
    config = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
    proc = subprocess.run(
        [str(accelerate), "launch", "--config_file", str(config), str(script),
         str(tiny_model_dir), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metas = [json.loads((tmp_path / f"meta.rank{r}.json").read_text()) for r in (0, 1)]
    assert all(m["world"] == 2 and m["type"] == "DistributedType.MULTI_CPU" for m in metas)
    assert metas[0]["step"] == 2  # 4 examples, global batch 2 = 1 per process x 2
    assert (tmp_path / "saved_by_rank0").is_file() and (tmp_path / "saved_by_rank1").is_file()

    adapter = tmp_path / "sft" / "adapter"
    assert sorted(p.name for p in adapter.iterdir() if p.is_dir()) == []
    assert not (adapter / "training_args.bin").exists()  # no pickles in adapter folders
    assert (adapter / "tokenizer_config.json").is_file()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
    loaded = get_peft_model_state_dict(model)
    memory = [load_file(tmp_path / f"memory.rank{r}.safetensors") for r in (0, 1)]
    assert set(loaded) == set(memory[0]) == set(memory[1]) and loaded
    for k, v in loaded.items():
        assert torch.equal(v, memory[0][k]) and torch.equal(v, memory[1][k]), k
    trained = [v for k, v in loaded.items() if "lora_B" in k]  # B starts at zero
    assert trained and all(v.abs().sum() > 0 for v in trained)


class _Plugin:
    def __init__(self) -> None:
        self.types: list[str] = []

    def set_state_dict_type(self, kind: str) -> None:
        self.types.append(kind)


class _FsdpTrainer:
    """Just what _save_adapter touches of a Trainer under FSDP with a sharded state dict."""

    is_fsdp_enabled = True

    def __init__(self, main: bool, writes_weights: bool = True) -> None:
        self.plugin = _Plugin()
        self.accelerator = SimpleNamespace(
            is_main_process=main, state=SimpleNamespace(fsdp_plugin=self.plugin)
        )
        self.saved_with: list[list[str]] = []
        self.writes_weights = writes_weights

    def save_model(self, folder: str) -> None:
        self.saved_with.append(list(self.plugin.types))
        if self.accelerator.is_main_process:  # what Trainer + PEFT write on rank 0
            d = Path(folder)
            (d / "ref").mkdir(parents=True)
            (d / "ref" / "adapter_model.safetensors").write_bytes(b"x")
            (d / "adapter_config.json").write_text("{}")
            (d / "training_args.bin").write_bytes(b"pickle")
            if self.writes_weights:
                (d / "adapter_model.safetensors").write_bytes(b"x")


def test_fsdp_save_switches_to_full_state_dict_on_every_rank(tmp_path):
    from optimus_lib.errors import OptimusError
    from optimus_lib.train.trainers import _save_adapter

    for main in (True, False):
        trainer, folder = _FsdpTrainer(main), tmp_path / f"main{main}"
        _save_adapter(trainer, folder)
        assert trainer.saved_with == [["FULL_STATE_DICT"]]  # switched before the gather
    assert sorted(p.name for p in (tmp_path / "mainTrue").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert not (tmp_path / "mainFalse").exists()  # other ranks only join the gather
    with pytest.raises(OptimusError, match="no adapter weights"):
        _save_adapter(_FsdpTrainer(True, writes_weights=False), tmp_path / "empty")
