"""`optimus train` (the train stage) runs unchanged under `accelerate launch` on 2 CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    cfg.write_text(
        f"model: {tiny_model_dir}\ncheckpoint_root: {tmp_path / 'ckpt'}\n"
        "sft: {batch_size: 1, max_length: 48, epochs: 1}\n"
        "dpo: {batch_size: 1, max_length: 48, epochs: 1}\n"
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
            "optimus_lib.cli",
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
        # 4 examples, batch 1 per process, 2 processes -> 2 optimizer steps per epoch
        assert log[-1]["step"] == 2, log[-1]
    assert not (run / "sft" / "checkpoints").exists()
