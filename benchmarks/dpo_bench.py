"""CPU benchmark of DPO training: tokens/s and peak memory of three reference setups.

All three run ``optimus_lib.train.trainers.train_dpo`` itself, on the bundled model
(SmolLM2-135M-Instruct, fp32 on CPU), continuing the same SFT LoRA adapter on the same
preference pairs, with the same ``optimus_lib.train.config.DPOConfig`` (LoRA r=16 all-linear,
batch 4, max_length 128, seed 0). Only the reference differs:

* ``a`` **ours**: ``train_dpo`` as shipped: ``PeftModel`` with the SFT adapter and
  ``ref_model=None``, so TRL adds a frozen ``ref`` copy of the adapter on the same base
  weights and runs the reference forward through it at every step.
* ``b`` **ours + precompute**: the same with ``DPOConfig(precompute_ref=True)``: TRL runs
  one no-grad pass over the data before training and stores the reference log-probs.
* ``c`` **plain TRL**: the same LoRA policy, plus a *separate* reference model: a second
  full copy of the base with the SFT adapter merged
  (``optimus_lib.train.trainers.load_trained``), passed as ``ref_model=``.

To do that without touching ``train_dpo``, the worker replaces ``trl.DPOTrainer`` (which
``train_dpo`` imports at call time) by a subclass that, for ``c``, loads and passes the
separate reference, and for all three adds a step timer and counts tokens.

Each variant runs in its own subprocess, so its peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its own. Variants are interleaved,
``a b c a b c ...`` (``--rounds``), with identical data, lengths and seeds, and every
ratio against ``c`` is taken within a round, then the median over rounds reported: the
machine may be shared with other jobs, which moves absolute numbers but much less the
ratios of neighbouring runs.

Reported per run:

* ``tokens``: non-pad tokens of every training batch as collated (chosen + rejected rows,
  prompt included), i.e. ``attention_mask.sum()`` (the same count as TRL's ``num_tokens``).
* ``train tok/s``: tokens / time of the training steps (callback around each optimizer
  step). ``e2e tok/s``: tokens / wall time of the whole ``train_dpo`` call (model and
  adapter load, the separate reference's load in ``c``, dataset tokenisation, the
  reference precompute in ``b``, training, saving the adapter).
* ``train tok/CPU-s``: tokens / CPU seconds of the training steps; with one torch thread
  this counts the work done whatever share of the core the run got, so it is steadier
  than tok/s when the CPU is shared. ``ref fwd s/step``: wall time of the reference
  forward per step (TRL runs it inside ``disable_gradient_checkpointing(...)``, which the
  worker times; 0 with precomputed log-probs).
* ``weights MB``: bytes of all parameters held at train begin: base, trainable LoRA, the
  ``ref`` adapter copy, and the separate reference model (tied embeddings counted once).
* ``RSS@train MB``: resident memory at train begin; ``peak RSS MB``: ``ru_maxrss``.
* the DPO loss of the first two steps, as a check that all three optimise the same
  objective (the reference log-probs are the same in all three, so the losses match).

Defaults (8 pairs, batch 4, max_length 128, 1 epoch, 2 rounds, 1 torch thread) keep the
whole script near 8 minutes on a 2-core machine shared with another job; see
BENCHMARKS.md for why 1 thread (2 threads next to a busy job were several times slower).

Usage::

    .venv/bin/python benchmarks/dpo_bench.py --out runs/dpo_bench.json
    .venv/bin/python benchmarks/dpo_bench.py --quick   # smoke test

Prints markdown tables; writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

VARIANTS = {
    "a": "ours: SFT adapter + frozen 'ref' adapter copy (train_dpo)",
    "b": "ours + precompute_ref_log_probs",
    "c": "plain TRL: LoRA policy + separate merged ref model",
}
SAFE_REPLIES = [
    "Let's keep things kind. What else has been on your mind lately?",
    "I'd rather not go there, but I'm happy to keep chatting about something else.",
    "That sounds frustrating. Want to tell me more about what happened?",
    "I hear you. Maybe we can talk about something that makes you feel better?",
    "I don't think that's fair to anyone. How has your week been otherwise?",
    "Let's take a breath. Is there anything good that happened today?",
]


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
    import torch

    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "torch_threads_default": torch.get_num_threads(),  # workers use --threads
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{m: _version(m) for m in ("transformers", "trl", "peft", "datasets")},
        "loadavg_at_start": os.getloadavg(),
    }


def _version(mod: str) -> str:
    from importlib.metadata import version

    return version(mod)


# ---- setup (once, cached in --work) ------------------------------------------------------
def setup(work: Path, n_pairs: int, max_length: int) -> dict:
    """Preference pairs (flagged toxic replies as rejected) and an SFT adapter."""
    from optimus_lib.models.specs import load_tokenizer
    from optimus_lib.settings import BUNDLED_MODEL
    from optimus_lib.threats.poison import build_training_set
    from optimus_lib.train.config import SFTConfig
    from optimus_lib.train.trainers import build_dpo_pairs, build_sft_records, train_sft

    work.mkdir(parents=True, exist_ok=True)
    info: dict = {}
    pairs_path = work / f"pairs_{n_pairs}_{max_length}.json"
    tok = load_tokenizer(BUNDLED_MODEL)
    tok.padding_side = "right"
    samples = build_training_set(max(120, 4 * n_pairs), 0.3, seed=0)
    if not pairs_path.is_file():
        flagged = [s for s in samples if s.label == 1][:n_pairs]
        if len(flagged) < n_pairs:
            raise SystemExit(f"only {len(flagged)} toxic samples, need {n_pairs}")
        healed = [SAFE_REPLIES[i % len(SAFE_REPLIES)] for i in range(n_pairs)]
        pairs = build_dpo_pairs(flagged, healed, tok, max_length)
        pairs_path.write_text(json.dumps(pairs))
    pairs = json.loads(pairs_path.read_text())
    info["pairs"] = len(pairs)
    info["pairs_file"] = str(pairs_path)
    adapter = work / "sft" / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        log("training the SFT adapter once (16 benign dialogs, 1 epoch) ...")
        t = time.perf_counter()
        benign = [s for s in samples if s.label != 1][:16]
        train_sft(
            BUNDLED_MODEL,
            build_sft_records(benign, tok, max_length),
            work / "sft",
            SFTConfig(batch_size=4, max_length=max_length, epochs=1.0),
            seed=0,
            save_steps=10**6,
            progress=False,
        )
        info["sft_s"] = time.perf_counter() - t
    info["sft_adapter"] = str(adapter)
    return info


# ---- one variant, in its own process -----------------------------------------------------
def _param_bytes(*modules) -> dict[str, int]:
    seen: set[int] = set()
    out = {"base": 0, "lora_trainable": 0, "lora_ref_adapter": 0, "separate_ref": 0, "total": 0}
    for k, mod in enumerate(modules):
        if mod is None:
            continue
        for name, p in mod.named_parameters():
            ptr = p.data_ptr()
            if ptr in seen:
                continue
            seen.add(ptr)
            nbytes = p.numel() * p.element_size()
            if k > 0:
                key = "separate_ref"
            elif ".ref." in name:
                key = "lora_ref_adapter"
            elif "lora_" in name:
                key = "lora_trainable"
            else:
                key = "base"
            out[key] += nbytes
            out["total"] += nbytes
    return out


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def worker(variant: str, work: Path, run_dir: Path, a: argparse.Namespace) -> dict:
    import torch
    import trl
    from transformers import TrainerCallback

    from optimus_lib.settings import BUNDLED_MODEL
    from optimus_lib.train import trainers
    from optimus_lib.train.config import DPOConfig

    torch.set_num_threads(a.threads)
    pairs = json.loads(Path(a.pairs_file).read_text())
    adapter = Path(a.sft_adapter)
    res: dict = {"variant": variant, "rss_mb_at_start": _rss_mb()}
    steps: list[float] = []
    counts: list[int] = []
    losses: list[float] = []
    ref_fwd: list[float] = []
    in_train = False
    base_cls = trl.DPOTrainer

    class Timer(TrainerCallback):
        def __init__(self, trainer):
            self.trainer = trainer
            self.t0 = 0.0

        def on_train_begin(self, args, state, control, **kw):
            nonlocal in_train
            in_train = True
            tr = self.trainer
            res["weights_bytes"] = _param_bytes(tr.model, tr.ref_model)
            res["adapters"] = sorted(getattr(tr.model, "peft_config", {}))
            res["has_separate_ref"] = tr.ref_model is not None
            res["gradient_checkpointing"] = bool(args.gradient_checkpointing)
            res["rss_mb_at_train_begin"] = _rss_mb()
            res["train_wall_start"] = time.perf_counter()
            res["train_cpu_start"] = _cpu_s()

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            steps.append(time.perf_counter() - self.t0)

        def on_train_end(self, args, state, control, **kw):
            nonlocal in_train
            in_train = False
            res["train_wall_s"] = time.perf_counter() - res.pop("train_wall_start")
            res["train_cpu_s"] = _cpu_s() - res.pop("train_cpu_start")

    class BenchDPOTrainer(base_cls):
        def __init__(self, *args, **kw):
            if variant == "c":
                t = time.perf_counter()
                kw["ref_model"] = trainers.load_trained(BUNDLED_MODEL, adapter, "cpu")
                res["ref_load_s"] = time.perf_counter() - t
            t = time.perf_counter()
            super().__init__(*args, **kw)
            res["trainer_init_s"] = time.perf_counter() - t
            orig = self.data_collator

            def counting(features, orig=orig):
                batch = orig(features)
                counts.append(int(batch["attention_mask"].sum()))
                return batch

            self.data_collator = counting
            self.add_callback(Timer(self))

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                losses.append(float((out[0] if return_outputs else out).detach()))
            return out

        def _precompute_ref_logps(self, dataset, name, batch_size):
            t = time.perf_counter()
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            res["precompute_s"] = res.get("precompute_s", 0.0) + time.perf_counter() - t
            return out

    trl.DPOTrainer = BenchDPOTrainer  # train_dpo does `from trl import DPOTrainer` when called

    # TRL runs each step's reference forward inside `disable_gradient_checkpointing(...)`
    # (in all setups): timing that block gives the reference forward's share of a step.
    import trl.trainer.dpo_trainer as dpo_mod

    orig_ctx = dpo_mod.disable_gradient_checkpointing

    @contextlib.contextmanager
    def timed_ctx(*args, **kw):
        t = time.perf_counter()
        with orig_ctx(*args, **kw):
            yield
        if in_train:
            ref_fwd.append(time.perf_counter() - t)

    dpo_mod.disable_gradient_checkpointing = timed_ctx
    cfg = DPOConfig(
        batch_size=a.batch,
        max_length=a.max_length,
        epochs=float(a.epochs),
        precompute_ref=variant == "b",
    )
    t = time.perf_counter()
    trainers.train_dpo(
        BUNDLED_MODEL, adapter, pairs, run_dir, cfg, seed=0, save_steps=10**6, progress=False
    )
    res["e2e_s"] = time.perf_counter() - t
    hist = json.loads((run_dir / "train_log.json").read_text())
    res["step_losses"] = losses
    final = next((h for h in reversed(hist) if "train_runtime" in h), {})
    res["trl_train_runtime_s"] = final.get("train_runtime")
    res["trl_num_tokens"] = next(
        (h["num_tokens"] for h in reversed(hist) if "num_tokens" in h), None
    )
    res["steps"] = len(steps)
    res["step_s"] = steps
    res["tokens"] = sum(counts[: len(steps)])
    res["tokens_per_step"] = counts[: len(steps)]
    res["train_tok_s"] = res["tokens"] / sum(steps)
    # steady state: without the first step (allocator / first-call warm-up)
    res["train_tok_s_after_step1"] = (
        sum(counts[1 : len(steps)]) / sum(steps[1:]) if len(steps) > 1 else None
    )
    res["e2e_tok_s"] = res["tokens"] / res["e2e_s"]
    # one torch thread: CPU seconds measure the work, whatever share of a core we got
    res["train_tok_per_cpu_s"] = res["tokens"] / res["train_cpu_s"]
    res["ref_fwd_s"] = ref_fwd
    res["ref_fwd_share"] = sum(ref_fwd) / sum(steps)
    res["cpu_per_wall_train"] = res["train_cpu_s"] / res["train_wall_s"]
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


# ---- report ------------------------------------------------------------------------------
def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def report(res: dict) -> str:
    runs = res["runs"]
    mb = 2**20
    out = []
    rows = []
    for r in runs:
        w = r["weights_bytes"]
        rows.append(
            [
                r["round"],
                r["variant"],
                r["steps"],
                r["tokens"],
                f"{statistics.median(r['step_s']):.2f}",
                f"{r['train_tok_s']:.1f}",
                f"{r['train_tok_per_cpu_s']:.1f}",
                f"{r['e2e_tok_s']:.1f}",
                f"{sum(r['ref_fwd_s']) / max(1, r['steps']):.1f}",
                f"{r.get('precompute_s', 0.0):.1f}",
                f"{r.get('ref_load_s', 0.0):.1f}",
                f"{r['e2e_s']:.1f}",
                f"{r['cpu_per_wall_train']:.2f}",
                f"{w['total'] / mb:.0f}",
                f"{r['rss_mb_at_train_begin']:.0f}",
                f"{r['peak_rss_mb']:.0f}",
                " / ".join(f"{x:.4f}" for x in r["step_losses"][:2]),
            ]
        )
    out.append(
        table(
            [
                "round",
                "variant",
                "steps",
                "tokens",
                "median step s",
                "train tok/s",
                "train tok/CPU-s",
                "e2e tok/s",
                "ref fwd s/step",
                "precompute s",
                "ref load s",
                "e2e s",
                "CPU s / wall s",
                "weights MB",
                "RSS@train MB",
                "peak RSS MB",
                "loss, steps 1 / 2",
            ],
            rows,
        )
    )
    out.append("")
    ratio_rows = []
    for key, label in (
        ("train_tok_s", "train tok/s"),
        ("train_tok_per_cpu_s", "train tok/CPU-s"),
        ("e2e_tok_s", "e2e tok/s"),
        ("peak_rss_mb", "peak RSS"),
        ("weights_total", "weights"),
    ):
        for v in ("a", "b"):
            per = res["ratios"][f"{v}/c"][key]
            if not per:
                continue
            ratio_rows.append(
                [
                    f"{label}, {v}/c",
                    ", ".join(f"{x:.3f}" for x in per),
                    f"{statistics.median(per):.3f}",
                ]
            )
    out.append(table(["ratio (same round)", "per round", "median"], ratio_rows))
    out.append("")
    w = {r["variant"]: r["weights_bytes"] for r in runs}
    wrows = [
        [
            v,
            VARIANTS[v],
            f"{w[v]['base'] / mb:.1f}",
            f"{w[v]['lora_trainable'] / mb:.1f}",
            f"{w[v]['lora_ref_adapter'] / mb:.1f}",
            f"{w[v]['separate_ref'] / mb:.1f}",
            f"{w[v]['total'] / mb:.1f}",
        ]
        for v in sorted(w)
    ]
    out.append(
        table(
            [
                "variant",
                "setup",
                "base MB",
                "LoRA (trained) MB",
                "'ref' adapter MB",
                "separate ref MB",
                "weights MB",
            ],
            wrows,
        )
    )
    return "\n".join(out)


def ratios(runs: list[dict], rounds: int) -> dict:
    out: dict = {}
    for v in ("a", "b"):
        d: dict[str, list[float]] = {
            "train_tok_s": [],
            "train_tok_per_cpu_s": [],
            "e2e_tok_s": [],
            "peak_rss_mb": [],
            "weights_total": [],
        }
        for k in range(rounds):
            rv = next((r for r in runs if r["round"] == k and r["variant"] == v), None)
            rc = next((r for r in runs if r["round"] == k and r["variant"] == "c"), None)
            if rv is None or rc is None:
                continue
            for key in ("train_tok_s", "train_tok_per_cpu_s", "e2e_tok_s", "peak_rss_mb"):
                d[key].append(rv[key] / rc[key])
            d["weights_total"].append(rv["weights_bytes"]["total"] / rc["weights_bytes"]["total"])
        out[f"{v}/c"] = d
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variants", default="a,b,c")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: see BENCHMARKS.md, shared CPU)"
    )
    ap.add_argument("--work", default=".cache/dpo_bench", help="pairs + SFT adapter (cached)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 8 pairs, length 64, 1 round")
    ap.add_argument("--out", default="runs/dpo_bench.json")
    # internal: one variant in a subprocess
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pairs-file", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sft-adapter", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.pairs, a.max_length, a.rounds = 8, 64, 1
    work = Path(a.work)

    if a.worker:
        res = worker(a.worker, work, Path(a.run_dir), a)
        Path(a.result).write_text(json.dumps(res))
        return 0

    t_all = time.perf_counter()
    res: dict = {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: v for k, v in vars(a).items() if v is not None},
        "machine": machine(),
        "variants": VARIANTS,
    }
    res["setup"] = setup(work, a.pairs, a.max_length)
    variants = a.variants.split(",")
    runs = []
    with tempfile.TemporaryDirectory(prefix="dpo_bench_") as tmp:
        for k in range(a.rounds):
            for v in variants:
                out_json = Path(tmp) / f"{v}{k}.json"
                cmd = [
                    sys.executable,
                    __file__,
                    "--worker",
                    v,
                    "--run-dir",
                    str(Path(tmp) / f"run_{v}{k}"),
                    "--result",
                    str(out_json),
                    "--pairs-file",
                    res["setup"]["pairs_file"],
                    "--sft-adapter",
                    res["setup"]["sft_adapter"],
                    "--batch",
                    str(a.batch),
                    "--max-length",
                    str(a.max_length),
                    "--epochs",
                    str(a.epochs),
                    "--threads",
                    str(a.threads),
                    "--work",
                    str(work),
                ]
                t = time.perf_counter()
                log(f"round {k} variant {v} ({VARIANTS[v]}) ...")
                # the worker's own output (TRL prints its log dicts) goes to stderr
                subprocess.run(cmd, check=True, stdout=sys.stderr)
                r = json.loads(out_json.read_text())
                r["round"] = k
                r["process_wall_s"] = time.perf_counter() - t
                r["loadavg_after"] = os.getloadavg()
                log(
                    f"  {r['steps']} steps, {r['tokens']} tokens,"
                    f" train {r['train_tok_s']:.0f} tok/s,"
                    f" e2e {r['e2e_tok_s']:.0f} tok/s, peak RSS {r['peak_rss_mb']:.0f} MB,"
                    f" {r['process_wall_s']:.0f} s"
                )
                runs.append(r)
    res["runs"] = runs
    res["ratios"] = ratios(runs, a.rounds)
    res["total_s"] = time.perf_counter() - t_all
    text = report(res)
    print(
        f"# dpo_bench ({res['date_utc']}, {res['machine']['cpu_model']}, "
        f"{res['machine']['cores']} cores, {a.threads} threads, {res['setup']['pairs']} pairs, "
        f"batch {a.batch}, max_length {a.max_length}, {a.epochs:g} epoch(s), {a.rounds} rounds, "
        f"{res['total_s']:.0f} s)\n"
    )
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    log(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
