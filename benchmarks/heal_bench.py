"""CPU benchmark of contextual healing: batched generation vs one reply at a time.

``optimus_lib.heal.healer.ContextualHealer`` on the bundled model (SmolLM2-135M-Instruct, fp32
on CPU) heals the same ``--n`` flagged samples (toxic replies injected by
``optimus_lib.threats.poison.build_training_set``) with ``--new-tokens`` new tokens, nucleus
sampling (top_p 0.95, T 0.7, as ``HealConfig``), ``detector=None`` and ``retries=0``, so
exactly one generation pass is timed and nothing is re-scored. Two healers share one
model and differ only in the engine's batch size:

* ``batched``: ``TransformersEngine(batch_size=16)`` (the shipped default, ``HealConfig.
  batch_size``): prompts sorted by length, left padded, ``model.generate`` per batch.
* ``single``: ``TransformersEngine(batch_size=1)``: one ``model.generate`` per sample.

Both run in one process, interleaved (batched, single, batched, single, ...) for
``--rounds`` rounds after one untimed warm-up call each; the ratio batched/single is
taken within each round and the median reported, as the CPU may be shared with other
jobs. Reported: replies/s, the tokens of the kept replies (the healer's text after its
``_tidy`` trimming, re-tokenised: the generated token count itself is not exposed),
CPU seconds per wall second, and replies that fell back to the fixed reply (empty).
First (``--thread-probe``, 2 rounds by default) a probe times one batch-1 greedy
generation of exactly 20 tokens at 1 and at 2 torch threads, alternated, to show which
thread count the (possibly shared) machine favours.

Defaults (16 samples, 3 rounds, 1 torch thread) keep the script near 8 minutes on a
2-core machine shared with another job (see BENCHMARKS.md for why 1 thread).

Usage::

    .venv/bin/python benchmarks/heal_bench.py --out runs/heal_bench.json
    .venv/bin/python benchmarks/heal_bench.py --quick   # smoke test

Prints markdown tables; writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from optimus_lib.heal.healer import ContextualHealer  # noqa: E402
from optimus_lib.models.engine import TransformersEngine  # noqa: E402
from optimus_lib.models.specs import load_model, load_tokenizer  # noqa: E402
from optimus_lib.settings import BUNDLED_MODEL  # noqa: E402
from optimus_lib.stages.heal import HealSettings as HealConfig  # noqa: E402
from optimus_lib.threats.poison import build_training_set  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine() -> dict:
    cpu = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln), ""
        )
    except OSError:
        pass
    from importlib.metadata import version

    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "loadavg_at_start": os.getloadavg(),
    }


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def thread_probe(model, tok, prompt: list[int], a: argparse.Namespace) -> list[dict]:
    """Batch-1 greedy generation of exactly 20 tokens at 1 and at 2 torch threads, alternated.

    On a CPU another job keeps busy, OpenMP threads that wait for a preempted sibling can
    make 2 threads far slower than 1; this shows which setting the machine favours now.
    """
    ids = torch.tensor([prompt])
    rows = []
    for k in range(a.thread_probe):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                t0, c0 = time.perf_counter(), cpu_seconds()
                model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=20,
                    min_new_tokens=20,
                    do_sample=False,
                    top_p=None,
                    top_k=None,
                    temperature=None,
                    pad_token_id=tok.pad_token_id,
                )
                wall = time.perf_counter() - t0
            rows.append(
                {
                    "round": k,
                    "threads": threads,
                    "prompt_tokens": len(prompt),
                    "seconds": wall,
                    "cpu_per_wall": (cpu_seconds() - c0) / wall,
                }
            )
            log(f"thread probe round {k}, {threads} thread(s): {wall:.2f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=16, help="flagged samples healed per timed call")
    ap.add_argument("--new-tokens", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: see BENCHMARKS.md, shared CPU)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--thread-probe",
        type=int,
        default=2,
        help="rounds of the 1-vs-2-thread generation probe (0: skip)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke test: 4 samples, 1 round")
    ap.add_argument("--out", default="runs/heal_bench.json")
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.rounds, a.thread_probe = 4, 1, 1
    torch.set_num_threads(a.threads)
    t_all = time.perf_counter()
    res: dict = {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": vars(a),
        "machine": machine(),
    }
    hc = HealConfig()
    samples = build_training_set(max(120, 4 * a.n), 0.3, seed=a.seed)
    flagged = [s for s in samples if s.label == 1][: a.n]
    if len(flagged) < a.n:
        raise SystemExit(f"only {len(flagged)} toxic samples, need {a.n}")
    tok = load_tokenizer(BUNDLED_MODEL)
    model = load_model(BUNDLED_MODEL, "cpu")

    def healer(bs: int) -> ContextualHealer:
        engine = TransformersEngine(model, tok, batch_size=bs)
        return ContextualHealer(
            engine,
            None,
            hc.fixed_reply,
            "bench",
            top_p=hc.top_p,
            temperature=hc.temperature,
            max_new_tokens=a.new_tokens,
            retries=0,
            seed=a.seed,
        )

    setups = {"batched": healer(a.batch), "single": healer(1)}
    if a.thread_probe:
        res["thread_probe"] = thread_probe(model, tok, setups["single"]._prompt(flagged[0]), a)
        torch.set_num_threads(a.threads)
    prompt_lens = [len(setups["single"]._prompt(s)) for s in flagged]
    res["prompt_tokens"] = {
        "mean": statistics.mean(prompt_lens),
        "min": min(prompt_lens),
        "max": max(prompt_lens),
        "total": sum(prompt_lens),
    }
    for h in setups.values():  # warm-up, untimed
        h.heal(flagged[:2])
    runs = []
    for k in range(a.rounds):
        for name, h in setups.items():
            t0, c0 = time.perf_counter(), cpu_seconds()
            out = h.heal(flagged)
            wall = time.perf_counter() - t0
            cpu = cpu_seconds() - c0
            gen_tokens = sum(len(tok(r.reply, add_special_tokens=False)["input_ids"]) for r in out)
            row = {
                "round": k,
                "setup": name,
                "batch": h.engine.batch_size,
                "n": len(out),
                "seconds": wall,
                "replies_per_s": len(out) / wall,
                "reply_tokens": gen_tokens,
                "cpu_per_wall": cpu / wall,
                "fallbacks": sum(r.fallback for r in out),
                "examples": [r.reply for r in out[:3]],
            }
            log(
                f"round {k} {name}: {wall:.1f} s, {row['replies_per_s']:.2f} replies/s, "
                f"CPU/wall {row['cpu_per_wall']:.2f}"
            )
            runs.append(row)
    res["runs"] = runs
    per = []
    for k in range(a.rounds):
        b = next(r for r in runs if r["round"] == k and r["setup"] == "batched")
        s = next(r for r in runs if r["round"] == k and r["setup"] == "single")
        per.append(b["replies_per_s"] / s["replies_per_s"])
    res["speedup_per_round"] = per
    res["speedup_median"] = statistics.median(per)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["total_s"] = time.perf_counter() - t_all

    print(
        f"# heal_bench ({res['date_utc']}, {res['machine']['cpu_model']}, "
        f"{res['machine']['cores']} cores, {a.threads} threads, {a.n} flagged samples, "
        f"{a.new_tokens} new tokens, prompts {res['prompt_tokens']['mean']:.1f} tokens mean, "
        f"{res['total_s']:.0f} s)\n"
    )
    print(
        table(
            [
                "round",
                "setup",
                "batch",
                "replies",
                "s",
                "replies/s",
                "reply tokens",
                "CPU s / wall s",
                "fallbacks",
            ],
            [
                [
                    r["round"],
                    r["setup"],
                    r["batch"],
                    r["n"],
                    f"{r['seconds']:.1f}",
                    f"{r['replies_per_s']:.2f}",
                    r["reply_tokens"],
                    f"{r['cpu_per_wall']:.2f}",
                    r["fallbacks"],
                ]
                for r in runs
            ],
        )
    )
    if res.get("thread_probe"):
        print()
        print(
            table(
                [
                    "probe round",
                    "threads",
                    "prompt tokens",
                    "s for 20 new tokens",
                    "CPU s / wall s",
                ],
                [
                    [
                        r["round"],
                        r["threads"],
                        r["prompt_tokens"],
                        f"{r['seconds']:.2f}",
                        f"{r['cpu_per_wall']:.2f}",
                    ]
                    for r in res["thread_probe"]
                ],
            )
        )
    print()
    print(
        table(
            ["ratio (same round)", "per round", "median"],
            [
                [
                    f"replies/s, batch {a.batch} / batch 1",
                    ", ".join(f"{x:.2f}" for x in per),
                    f"{res['speedup_median']:.2f}",
                ]
            ],
        )
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    log(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
