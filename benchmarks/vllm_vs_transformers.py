"""vLLM vs transformers on the same prompts: judge scores/s and heal tokens/s.

Both engines are the project's own (``build_engine(..., "transformers" | "vllm")``) on
the bundled SmolLM2-135M-Instruct, fed the same token ids:

* judge: the LLM judge's prompts (``LLMJudge.prompt_ids``) for N bundled dialogs, one
  next-token probability each (``next_token_probs``): scores/s;
* heal: the healer's prompts (``ContextualHealer._prompt``) for M dialogs, sampled with
  the quickstart's heal settings (top-p 0.95, temperature 0.7, per-record seeds) up to T
  new tokens (``generate``): generated tokens/s.

FLOP floor: 2 x parameters x tokens / peak FLOP/s, with the peak measured here by a
torch matmul in the engine's dtype on both cores. The judge's tokens are its prompt
tokens (all of them, and those left after the shared prefix, which a prefix cache
computes once); heal's are the prompt tokens plus the generated ones. Floor ratio =
measured time / floor time (1.0 = at the floor).

Run it in the vLLM venv (``make test-vllm`` builds it), alone on the machine:

    flock -x /tmp/optimus-heavy.lock env PYTHONPATH=$PWD \\
        .venv-vllm/bin/python benchmarks/vllm_vs_transformers.py --json out.json

vLLM's worker is bound to both cores (``VLLM_CPU_OMP_THREADS_BIND=0-1``,
``VLLM_CPU_NUM_OF_RESERVED_CPU=0``) unless the environment says otherwise, as
transformers uses both; eager mode (``OPTIMUS_VLLM_ARGS``), as compile mode's start-up
compile takes minutes here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OPTIMUS_VLLM_ARGS", '{"enforce_eager": true}')
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def peak_flops(dtype, n: int = 2048, reps: int = 10) -> float:
    """Best-of-``reps`` FLOP/s of an n x n matmul in ``dtype`` (all torch threads)."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def n_params(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118


def prompts_for(engine, n_judge: int, n_heal: int):
    """The judge's and the healer's token ids for bundled dialogs (the same per engine)."""
    import tempfile

    from optimus_lib.data.io import read_samples
    from optimus_lib.detect.llm_judge import LLMJudge
    from optimus_lib.heal.healer import ContextualHealer
    from optimus_lib.stages import data as D

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        n = max(n_judge, n_heal)
        D.prepare_data(
            D.DataSettings(n_train=n, n_eval_toxic=2, n_eval_benign=2, max_context_turns=1),
            d / "t.jsonl",
            d / "a.jsonl",
            d / "b.jsonl",
        )
        samples = read_samples(d / "t.jsonl")
    judge = LLMJudge(engine)
    healer = ContextualHealer(engine, None, "", "bundled")
    jp = [judge.prompt_ids(s, judge.questions[0]) for s in samples[:n_judge]]
    hp = [healer._prompt(s) for s in samples[:n_heal]]
    return jp, hp, judge


def run_engine(kind: str, dtype: str, args, peak: float, params: int) -> dict:
    import torch

    from optimus_lib.models.engine import TransformersEngine, build_engine

    t = time.perf_counter()
    eng = build_engine("bundled", kind, "cpu", batch_size=args.batch_size, dtype=dtype)
    load = time.perf_counter() - t
    jp, hp, judge = prompts_for(eng, args.n_judge, args.n_heal)
    sets = [judge.yes_ids, judge.no_ids]
    kw = {"do_sample": True, "top_p": 0.95, "temperature": 0.7}
    seeds = list(range(len(hp)))
    # warm-up: first calls allocate caches and pick kernels
    eng.next_token_probs(jp[:4], sets)
    eng.generate(hp[:4], max_new_tokens=4, seeds=seeds[:4], **kw)
    t = time.perf_counter()
    probs = eng.next_token_probs(jp, sets)
    judge_s = time.perf_counter() - t
    t = time.perf_counter()
    texts = eng.generate(hp, max_new_tokens=args.new_tokens, seeds=seeds, **kw)
    heal_s = time.perf_counter() - t
    new_tokens = sum(len(eng.tokenizer(x, add_special_tokens=False)["input_ids"]) for x in texts)
    judge_tokens = sum(len(p) for p in jp)
    prefix = TransformersEngine.common_prefix(jp)
    heal_tokens = sum(len(p) for p in hp) + new_tokens
    out = {
        "engine": kind,
        "dtype": dtype,
        "load_s": round(load, 1),
        "judge_prompts": len(jp),
        "judge_s": round(judge_s, 2),
        "judge_scores_per_s": round(len(jp) / judge_s, 1),
        "judge_floor_ratio_all_tokens": round(judge_s / (2 * params * judge_tokens / peak), 2),
        "judge_floor_ratio_after_prefix": round(
            judge_s / (2 * params * (judge_tokens - prefix * (len(jp) - 1)) / peak), 2
        ),
        "heal_prompts": len(hp),
        "heal_new_tokens": new_tokens,
        "heal_s": round(heal_s, 2),
        "heal_tokens_per_s": round(new_tokens / heal_s, 1),
        "heal_floor_ratio": round(heal_s / (2 * params * heal_tokens / peak), 2),
        "p_no": [round(float(x), 6) for x in (probs[:, 1] / probs.sum(1))[:8]],
        "torch_threads": torch.get_num_threads(),
    }
    if kind == "vllm":
        from optimus_lib.models.vllm_engine import VLLMEngine

        VLLMEngine.close_shared()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-judge", type=int, default=128)
    ap.add_argument("--n-heal", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64, help="transformers engine batch")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--engines", default="transformers,vllm")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    from optimus_lib.models.specs import convert_bundled

    params = n_params(convert_bundled() / "model.safetensors")
    rows, peaks = [], {}
    for dtype in args.dtypes.split(","):
        peaks[dtype] = peak_flops(getattr(torch, dtype))
        for kind in args.engines.split(","):
            row = run_engine(kind, dtype, args, peaks[dtype], params)
            print(json.dumps(row), flush=True)
            rows.append(row)
    ratios = {}
    for dtype in peaks:
        by = {r["engine"]: r for r in rows if r["dtype"] == dtype}
        if {"transformers", "vllm"} <= set(by):
            ratios[dtype] = {
                "judge_vllm_over_transformers": round(
                    by["vllm"]["judge_scores_per_s"] / by["transformers"]["judge_scores_per_s"], 2
                ),
                "heal_vllm_over_transformers": round(
                    by["vllm"]["heal_tokens_per_s"] / by["transformers"]["heal_tokens_per_s"], 2
                ),
            }
    out = {
        "params": params,
        "peak_gflops": {k: round(v / 1e9, 1) for k, v in peaks.items()},
        "rows": rows,
        "ratios": ratios,
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
