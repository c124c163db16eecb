"""Training on 1 vs 2 processes on this machine, and the launch overhead of each backend.

    flock -x /tmp/optimus-heavy.lock .venv/bin/python benchmarks/train_processes.py [--out F]

1. SFT (method ``no_dpo``) of the bundled model (SmolLM2-135M, LoRA r=16) on the same
   data and the same global batch (``batch_size`` 4 x ``grad_accum`` 1): in this process,
   and under torchrun with 1 and with 2 ranks (2: 2 per device). Tokens/s is the
   training set's tokens (prompt + reply, the model's chat template) x epochs over the
   trainer's own ``train_runtime``; the overhead is the wall time minus ``train_runtime``
   (process start, imports, model load, process group, the final save).
2. The process group alone: torchrun starting 2 ranks that only import torch, join a gloo
   group and pass one barrier (that is, the launcher's cost without training).
3. The TrainJob path on the Kubeflow SDK's local-process backend (fresh venv, torch
   installed into it, 2 ranks) on a tiny random model: wall time against its training
   time, i.e. what that backend adds before the first step.

Prints a JSON summary (and writes it with ``--out``). CPU only here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OPTIMUS_CACHE", str(ROOT / ".cache" / "optimus"))
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])


def _dialogs(n: int) -> list[dict]:
    """Benign chit-chat dialogs (the bundled data set), as the input JSONL's records."""
    from optimus_lib.data.sources import chitchat_samples

    return [{"id": s.id, "context": s.context, "response": s.response}
            for s in chitchat_samples(n, seed=0)]  # fmt: skip


def _tokens(model: str, path: Path, max_length: int) -> int:
    from optimus_lib.data.io import read_samples
    from optimus_lib.models.specs import load_tokenizer
    from optimus_lib.train.trainers import build_sft_records

    tok = load_tokenizer(model)
    records = build_sft_records(read_samples(path), tok, max_length)
    total = 0
    for r in records:
        text = tok.apply_chat_template([*r["prompt"], *r["completion"]], tokenize=False)
        total += min(max_length, len(tok(text, add_special_tokens=False)["input_ids"]))
    return total


def _settings(model: str, root: Path, tag: str):
    from optimus_lib.stages.train import TrainSettings

    return TrainSettings.model_validate(
        {
            "model": model,
            "method": "no_dpo",
            "checkpoint_root": str(root / f"ckpt-{tag}"),
            "save_steps": 1000,
            "sft": {"batch_size": 4, "grad_accum": 1, "epochs": 1, "max_length": 128,
                    "gradient_checkpointing": False},
        }
    )  # fmt: skip


def _in_process(model: str, data: Path, root: Path) -> dict:
    from optimus_lib.stages.train import train

    start = time.perf_counter()
    res = train(_settings(model, root, "inproc"), data, root / "adapter-inproc")
    return {"wall_s": time.perf_counter() - start, "metrics": res.metrics}


def _torchrun(model: str, data: Path, root: Path, n: int) -> dict:
    from optimus_lib.stages.launch import run_processes

    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
    start = time.perf_counter()
    res = run_processes(_settings(model, root, f"tr{n}"), data, root / f"adapter-tr{n}", None, n)
    return {"wall_s": time.perf_counter() - start, "metrics": res.metrics}


_PG = """
import os, time
t0 = time.perf_counter()
import torch, torch.distributed as dist
t1 = time.perf_counter()
dist.init_process_group("gloo")
dist.barrier()
t2 = time.perf_counter()
if dist.get_rank() == 0:
    print(f"PG {t1 - t0:.3f} {t2 - t1:.3f}", flush=True)
dist.destroy_process_group()
"""


def _process_group(root: Path) -> dict:
    from optimus_lib.stages.launch import torchrun_command

    script = root / "pg.py"
    script.write_text(_PG)
    start = time.perf_counter()
    out = subprocess.run(
        torchrun_command(2, [str(script)]), capture_output=True, text=True, check=True
    ).stdout
    wall = time.perf_counter() - start
    line = next(ln for ln in out.splitlines() if ln.startswith("PG "))
    imp, init = (float(x) for x in line.split()[1:])
    return {"wall_s": wall, "rank0_import_torch_s": imp, "rank0_init_and_barrier_s": init}


def _tiny_model(root: Path) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from optimus_lib.models.specs import convert_bundled

    tok = AutoTokenizer.from_pretrained(convert_bundled())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
                      tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    out = root / "tiny"
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _local_trainjob(root: Path, data: Path) -> dict:
    from optimus_lib.stages.trainjob import run_local_trainjob

    model = _tiny_model(root)
    s = _settings(model, root, "localjob")
    keep = ("PIP_FIND_LINKS", "PIP_CERT", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL",
            "PIP_CONSTRAINT", "PIP_DEFAULT_TIMEOUT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
            "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM", "OPTIMUS_CACHE")  # fmt: skip
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(HOME=str(root / "home"), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    start = time.perf_counter()
    res = run_local_trainjob(s, data, root / "adapter-localjob", None, processes=2,
                             packages=("torch==2.13.0",), env=env, echo=lambda _: None)  # fmt: skip
    wall = time.perf_counter() - start
    # the same training under our own launcher, for the difference
    start = time.perf_counter()
    mine = _torchrun(model, data, root / "mine", 2)
    return {
        "local_backend_wall_s": wall,
        "local_backend_train_s": res.metrics.get("sft_seconds"),
        "torchrun_wall_s": time.perf_counter() - start,
        "torchrun_train_s": mine["metrics"].get("sft_seconds"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--skip-local-trainjob", action="store_true")
    a = p.parse_args()
    from optimus_lib.data.io import write_jsonl
    from optimus_lib.models.specs import convert_bundled

    model = str(convert_bundled())
    with tempfile.TemporaryDirectory(prefix="optimus-bench-") as tmp:
        root = Path(tmp)
        data = root / "sft.jsonl"
        write_jsonl(data, _dialogs(a.samples))
        tokens = _tokens(model, data, 128)
        summary: dict = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            "no GPU",
            "model": "SmolLM2-135M-Instruct (bundled), LoRA r=16, SFT, max_length 128",
            "samples": a.samples,
            "tokens": tokens,
        }

        def save(key: str, value) -> None:  # after every part: a long run keeps what it did
            summary[key] = value
            print(json.dumps({key: value}), flush=True)
            if a.out:
                a.out.parent.mkdir(parents=True, exist_ok=True)
                a.out.write_text(json.dumps(summary, indent=1) + "\n")

        rows: dict = {}
        for name, fn in (
            ("in_process_1", lambda: _in_process(model, data, root)),
            ("torchrun_1", lambda: _torchrun(model, data, root, 1)),
            ("torchrun_2", lambda: _torchrun(model, data, root, 2)),
        ):
            r = fn()
            m = r["metrics"]
            rows[name] = {
                "processes": m["train_processes"],
                "per_device_batch": m["sft_per_device_batch"],
                "global_batch": m["sft_global_batch"],
                "steps": m.get("sft_steps"),
                "train_s": m["sft_seconds"],
                "tokens_per_s": tokens / m["sft_seconds"],
                "wall_s": r["wall_s"],
                "overhead_s": r["wall_s"] - m["sft_seconds"],
            }
            save("runs", rows)
        save("process_group_2_ranks", _process_group(root))
        if not a.skip_local_trainjob:
            save("trainjob_local_backend", _local_trainjob(root, data))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
