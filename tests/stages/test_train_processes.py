"""The training stage on 2 CPU processes (torchrun, gloo) through dpo_train's ``processes``.

* the dpo_train component under kfp.local with ``processes=2``: 2 ranks in the metrics,
  the global batch kept, one adapter that loads and equals a 1-process run of the same
  recipe (same examples per step, same steps);
* a rank that fails mid-training fails the run quickly with that rank's one line (the
  other rank waits in a collective: torchrun stops it, no hang);
* the retried 2-process run resumes from the checkpoint the failed one left.
"""

# No ``from __future__ import annotations``: kfp reads the pipeline's annotations as types.
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import write_dialogs_and_pairs

pytestmark = [
    pytest.mark.slow,  # several processes, each importing torch + transformers (~20 s)
    pytest.mark.filterwarnings("ignore:.*have no effect in the current local runner"),
    pytest.mark.filterwarnings("ignore:You may be attemping to run a task that uses custom"),
]

ROOT = Path(__file__).resolve().parents[2]
TURNS = [
    ("hi, how are you?", "great thanks, and you?", "you are a worthless idiot"),
    ("any plans today?", "just reading a book", "shut up loser"),
    ("I like dogs", "dogs are the best!", "dogs are for morons"),
    ("what's up", "not much, you?", "none of your business, jerk"),
]
# fp32: the 1-process and 2-process adapters are compared to 1e-3, which bf16 autocast's
# rounding (different per reduction order) does not hold.
TINY = {"batch_size": 2, "max_length": 48, "gradient_checkpointing": False, "bf16": False,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}  # fmt: skip


def _data(folder: Path) -> tuple[Path, Path]:
    return write_dialogs_and_pairs(folder, TURNS)


@pytest.fixture
def env(monkeypatch):
    """CPU only (gloo), one thread per rank, this checkout first on the ranks' path."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def test_dpo_train_component_on_two_processes_matches_one(tmp_path, tiny_model_dir, env):
    from kfp import dsl, local
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from components.dpo_train.component import dpo_train
    from optimus_lib.stages.train import TrainSettings, train

    sft, prefs = _data(tmp_path)
    settings = {"model": str(tiny_model_dir), "checkpoint_root": str(tmp_path / "ckpt"),
                "sft": TINY, "dpo": TINY}  # fmt: skip

    @dsl.pipeline(name="train-2proc")
    def two_procs(sft_uri: str, prefs_uri: str) -> dsl.Model:
        s = dsl.importer(artifact_uri=sft_uri, artifact_class=dsl.Dataset, reimport=True)
        p = dsl.importer(artifact_uri=prefs_uri, artifact_class=dsl.Dataset, reimport=True)
        task = dpo_train(sft_data=s.output, preferences=p.output, settings=settings, processes=2)
        return task.outputs["adapter"]

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    adapter = Path(two_procs(sft_uri=str(sft), prefs_uri=str(prefs)).output.path)
    (run_dir,) = (tmp_path / "kfp").iterdir()
    out = json.loads((run_dir / "dpo-train" / "executor_output.json").read_text())
    metrics = out["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert metrics["train_processes"] == 2
    for stage in ("sft", "dpo"):  # global batch 2 = 1 per device x 2 processes x 1
        assert metrics[f"{stage}_per_device_batch"] == 1 and metrics[f"{stage}_grad_accum"] == 1
        assert metrics[f"{stage}_global_batch"] == 2 and metrics[f"{stage}_steps"] == 2
    names = {p.name for p in adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    assert not any((adapter / n).is_dir() for n in names) and "training_args.bin" not in names
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)

    # The same recipe in this process: 2 examples per step on one device.
    one = train(TrainSettings.model_validate(settings), sft, tmp_path / "one", prefs)
    assert one.key != out["artifacts"]["adapter"]["artifacts"][0]["metadata"]["settings_digest"]
    assert one.metrics["dpo_steps"] == 2 and one.metrics["dpo_per_device_batch"] == 2
    two, ref = (
        load_file(adapter / "adapter_model.safetensors"),
        load_file(tmp_path / "one" / "adapter_model.safetensors"),
    )
    assert set(two) == set(ref) and any("lora_B" in k for k in two)
    for k, v in two.items():
        assert v.shape == ref[k].shape
        assert (v - ref[k]).abs().max() <= 1e-6 + 1e-3 * ref[k].abs().max(), k
    assert all(v.abs().sum() > 0 for k, v in two.items() if "lora_B" in k)  # it trained


# A rank entry point that wraps the real one: records what each rank resumed from and,
# when FAIL_AT=rank:step, makes that rank fail after that many optimizer steps (before the
# next one, so its peer is blocked in the next step's gradient all-reduce).
_ENTRY = """
import json, os, sys
from pathlib import Path

import transformers

from optimus_lib.errors import OptimusError
from optimus_lib.stages import launch

rank = int(os.environ["RANK"])
record = Path(os.environ["RECORD_DIR"])
fail_rank, fail_step = map(int, (os.environ.get("FAIL_AT") or "-1:-1").split(":"))
real_train = transformers.Trainer.train


class Fail(transformers.TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
        if rank == fail_rank and state.global_step == fail_step:
            raise OptimusError(f"injected failure after step {state.global_step}")


def train(self, resume_from_checkpoint=None, **kw):
    (record / f"resume.rank{rank}.json").write_text(json.dumps(resume_from_checkpoint))
    self.add_callback(Fail())
    return real_train(self, resume_from_checkpoint=resume_from_checkpoint, **kw)


transformers.Trainer.train = train
sys.exit(launch.main())
"""


def test_failing_rank_fails_fast_with_its_line_and_the_retry_resumes(tmp_path, tiny_model_dir, env,
                                                                     monkeypatch):  # fmt: skip
    from optimus_lib.errors import OptimusError
    from optimus_lib.stages.launch import run_processes
    from optimus_lib.stages.train import TrainSettings

    sft, _ = _data(tmp_path)
    entry = tmp_path / "entry.py"
    entry.write_text(_ENTRY)
    monkeypatch.setenv("RECORD_DIR", str(tmp_path))
    # no_dpo: SFT only; 4 examples, global batch 2, 2 epochs -> 4 steps, a checkpoint each.
    s = TrainSettings.model_validate(
        {"model": str(tiny_model_dir), "method": "no_dpo", "save_steps": 1,
         "checkpoint_root": str(tmp_path / "ckpt"), "sft": {**TINY, "epochs": 2},
         "distributed": {"process_group_timeout_s": 60}}
    )  # fmt: skip
    monkeypatch.setenv("FAIL_AT", "1:2")
    start = time.monotonic()
    with pytest.raises(OptimusError) as err:
        run_processes(s, sft, tmp_path / "adapter", None, 2, entry=[str(entry)])
    took = time.monotonic() - start
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == "training on 2 processes failed: rank 1: injected failure after step 2"
    # rank 0 was stopped, not left waiting in the collective (its timeout is 1800 s)
    assert took < 600, took
    assert not (tmp_path / "adapter").exists()
    (key,) = (tmp_path / "ckpt").iterdir()
    assert [p.name for p in (key / "sft" / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"]

    monkeypatch.delenv("FAIL_AT")
    result = run_processes(s, sft, tmp_path / "adapter", None, 2, entry=[str(entry)])
    for rank in (0, 1):  # both ranks resumed from the step-2 checkpoint
        resumed = json.loads((tmp_path / f"resume.rank{rank}.json").read_text())
        assert resumed == str(key / "sft" / "checkpoints" / "checkpoint-2")
    assert result.key == key.name and result.metrics["sft_steps"] == 4
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not (key / "sft" / "checkpoints").exists()


def test_bad_processes_and_batch_are_one_line_before_any_rank_starts(tmp_path, tiny_model_dir):
    """Checked by the launcher itself: no torchrun, so this one is fast."""
    from optimus_lib.errors import OptimusError
    from optimus_lib.stages.launch import resolve_processes, run_processes
    from optimus_lib.stages.train import TrainSettings

    with pytest.raises(OptimusError, match="processes: must be 0"):
        resolve_processes(-1)
    s = TrainSettings(model=str(tiny_model_dir), sft={"batch_size": 3})
    with pytest.raises(OptimusError, match=r"train.sft: the global batch .* = 3\) does not split"):
        run_processes(s, tmp_path / "x.jsonl", tmp_path / "a", None, 2)


def test_launcher_timeout_stops_every_rank(tmp_path, tiny_model_dir, monkeypatch):
    """A rank that never finishes: the launch timeout kills the group and says so."""
    from optimus_lib.errors import OptimusError
    from optimus_lib.stages.launch import run_processes
    from optimus_lib.stages.train import TrainSettings

    sleeper = tmp_path / "sleep.py"
    sleeper.write_text(
        "import os, time, pathlib\n"
        "pathlib.Path(os.environ['PIDS'], os.environ['RANK']).write_text(str(os.getpid()))\n"
        "time.sleep(600)\n"
    )
    monkeypatch.setenv("PIDS", str(tmp_path))
    s = TrainSettings(model=str(tiny_model_dir), distributed={"launch_timeout_s": 10})
    start = time.monotonic()
    with pytest.raises(OptimusError, match="did not finish within 10 s .*launch_timeout_s"):
        run_processes(s, tmp_path / "x.jsonl", tmp_path / "a", None, 2, entry=[str(sleeper)])
    assert time.monotonic() - start < 300  # stopped at its 10 s limit, not run forever
    for rank in ("0", "1"):
        pid = int((tmp_path / rank).read_text())
        assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
