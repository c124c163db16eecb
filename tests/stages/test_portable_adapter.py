"""A registered model works somewhere else: pulled into another folder, loaded in a fresh
process with PEFT alone (no optimus_lib), its base model resolved by hub id and pinned
revision from the Hugging Face cache, as a user who has that model would load it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import OPTIMUS_CLI, write_lines

pytestmark = pytest.mark.slow

LOAD_WITH_PEFT_ONLY = """
import json, sys
import torch
from peft import AutoPeftModelForCausalLM

model = AutoPeftModelForCausalLM.from_pretrained("pulled/adapter").eval()
with torch.no_grad():
    logits = model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits[0, -1]
print(json.dumps({
    "logits": logits[:16].tolist(),
    "optimus_loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("optimus_lib", "cli")),
}))
"""


def _optimus(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [*OPTIMUS_CLI, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-1500:]
    return r


def test_a_pulled_version_loads_elsewhere_with_peft_only(tmp_path, tiny_hub_model):
    spec, hf_home = tiny_hub_model
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2])])
    work = tmp_path / "trainer"
    work.mkdir()
    rows = [{"id": str(i), "context": [f"hi {i}"], "response": "hello there"} for i in range(4)]
    data = write_lines(work / "d.jsonl", [json.dumps(r) for r in rows])
    (work / "s.yaml").write_text(
        f"model: {spec}\nmethod: no_dpo\ntrain: {{checkpoint_root: {work / 'ckpt'}, "
        "sft: {batch_size: 4, max_length: 48, lora: {r: 4}}}\n"
    )
    _optimus("train", str(data), "-o", str(work / "adapter"), "-s", str(work / "s.yaml"),
             env=env, cwd=work)  # fmt: skip
    config = json.loads((work / "adapter" / "adapter_config.json").read_text())
    name, _, revision = spec.partition("@")
    assert config["base_model_name_or_path"] == name and config["revision"] == revision
    front = (work / "adapter" / "README.md").read_text().split("---")[1]
    assert yaml.safe_load(front)["base_model"] == name and str(work) not in front

    evaluation = work / "evaluation.json"
    evaluation.write_text(json.dumps({"metrics": {"rtr_toxic": 0.0}, "gate": {"passed": True}}))
    registry = tmp_path / "registry"
    _optimus("models", "register", str(work / "adapter"), "-r", str(registry), "-n", "chat",
             "--metrics", str(evaluation), env=env, cwd=work)  # fmt: skip
    card = (registry / "models" / "chat" / "v1" / "model_card.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == name and meta["library_name"] == "peft"
    assert "optimus" in meta["tags"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _optimus("models", "pull", "chat@latest", "-r", str(registry), "-o",
             str(elsewhere / "pulled"), env=env, cwd=elsewhere)  # fmt: skip
    clean = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    r = subprocess.run(
        [sys.executable, "-c", LOAD_WITH_PEFT_ONLY],
        capture_output=True, text=True, env=clean, cwd=elsewhere, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["optimus_loaded"] == []

    # the same model, loaded here from the trainer's own files
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    hub = hf_home / "hub" / ("models--" + name.replace("/", "--")) / "snapshots" / revision
    base = AutoModelForCausalLM.from_pretrained(hub, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(work / "adapter")).eval()
    with torch.no_grad():
        want = model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits[0, -1][:16].tolist()
    assert got["logits"] == pytest.approx(want, abs=1e-5)
