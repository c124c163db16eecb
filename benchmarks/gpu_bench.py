"""GPU throughput benchmark for Optimus's model paths, on random weights.

Throughput and memory of a transformer depend on its shape, not on its weights, so every
model here is built from a config (LlamaConfig, vocabulary of the tokenizer used) with
random weights: nothing is downloaded. Measured, in bf16 on the GPU:

* ``matmul``: the card's dense bf16 matrix-product rate (8192^3, CUDA events), used as
  the ceiling for the FLOP floors below;
* ``judge``: the LLM judge's scan (``LLMJudge._p_no`` -> ``TransformersEngine.next_token_probs``:
  batches by length, one forward with ``logits_to_keep=1``) over synthetic dialogs of
  realistic length, at a ~0.5B and an 8B-class shape; dialogs/s, prompt tokens/s, the FLOP
  floor and measured/floor; plus the end-to-end ``LLMJudge.score`` (prompt building included);
* ``naive``: the baseline the judge replaces: per-dialog ``model.generate(max_new_tokens=3)``
  and parsing yes/no from the text;
* ``gen``: healing generation (``engine.generate``, 48 new tokens, nucleus sampling),
  batched vs one prompt at a time;
* ``train``: SFT then DPO step time, tokens/s and peak memory with TRL, using the settings
  of ``optimus_lib.train.trainers`` (LoRA r=16 all-linear, batch 4, max_length 256; DPO continues
  the SFT adapter with TRL's frozen ``ref`` adapter copy); ``--profile`` adds cProfile of
  the train loops and a raw forward+backward outside the Trainer;
* ``diag`` (not in the default list): one PEFT LoRA forward+backward under variants
  (weights dtype, gradient checkpointing, sdpa/eager, padding mask) and the top kernels of
  the trainers' setting, to see whether a step is GPU- or host-bound.

Usage (GPU)::

    PYTHONPATH=src python3 benchmarks/gpu_bench.py --tok .cache/gpu_bench/tok
    PYTHONPATH=src python3 benchmarks/gpu_bench.py --sections train

CPU smoke test (tiny shapes, a few dialogs, well under a minute)::

    PYTHONPATH=src .venv/bin/python benchmarks/gpu_bench.py --tiny

Prints markdown tables and writes JSON to ``$OUT/gpu_bench_<sections>.json`` (``--json``
overrides; without ``$OUT`` it goes to ``runs/``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import inspect
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SHAPES = {
    # name: (hidden, layers, intermediate, heads, kv_heads, tie_embeddings)
    "tiny": (64, 2, 128, 4, 2, True),
    "0.5b": (896, 24, 4864, 14, 2, True),  # Qwen2.5-0.5B-like
    "1.5b": (1536, 28, 8960, 12, 2, True),  # Qwen2.5-1.5B-like
    "8b": (4096, 32, 14336, 32, 8, False),  # Llama-3-8B-like
}

WORDS = (  # noqa: SIM905
    "the a you i we they it this that not really just think know said people time way "
    "good bad game movie food work school friend house car city music book phone money "
    "why how what when where maybe always never very pretty kind of sort like love hate "
    "stupid great terrible awesome weird funny honest sorry thanks please yes no well "
    "guess mean want need should would could can will did does was were is are have "
    "had been going gonna about because but and or so if then than more most less"
).split()


# ---- helpers -------------------------------------------------------------------------
def sync(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(dev: str) -> None:
    gc.collect()
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(dev: str) -> float | None:
    if dev.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return None


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sentence(rng: random.Random, n: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice([".", "?", "!", "."])


def turn(rng: random.Random, n_words: int) -> str:
    out, left = [], n_words
    while left > 0:
        k = min(left, rng.randint(5, 14))
        out.append(sentence(rng, k))
        left -= k
    return " ".join(out)


def synth_samples(n: int, seed: int, words: tuple[int, int]):
    """Dialogs of 1-3 context turns plus a reply, about ``words`` words in total."""
    from optimus_lib.data.schema import Sample

    rng = random.Random(seed)
    out = []
    for i in range(n):
        total = rng.randint(*words)
        n_ctx = rng.choice([1, 1, 3])  # contexts end on the user turn: odd lengths
        shares = [rng.random() + 0.5 for _ in range(n_ctx + 1)]
        sizes = [max(3, int(total * s / sum(shares))) for s in shares]
        ctx = [turn(rng, k) for k in sizes[:-1]]
        out.append(Sample(context=ctx, response=turn(rng, sizes[-1]), id=str(i), label=i % 2))
    return out


def load_tok(path: str | None):
    from optimus_lib.models.specs import convert_bundled, load_tokenizer

    return load_tokenizer(path or str(convert_bundled()))


def build_model(shape: str, tok, dev: str, dtype: torch.dtype):
    """A LlamaForCausalLM of the given shape with random weights, built on ``dev``."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    hidden, layers, inter, heads, kv, tie = SHAPES[shape]
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=4096,
        tie_word_embeddings=tie,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def param_counts(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight
    tied = head.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    head_n = 0 if tied else head.numel()
    # parameters that a token's forward multiplies by (embedding lookup and LM head excluded)
    body = total - emb - head_n
    return {"total": total, "body": body, "lm_head": head.numel(), "tied": tied}


# ---- sections ------------------------------------------------------------------------
def bench_matmul(dev: str, tiny: bool) -> dict:
    n = 1024 if tiny else 8192
    dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    g = torch.Generator(device=dev).manual_seed(0)
    sets = [
        (
            torch.randn(n, n, device=dev, dtype=dtype, generator=g),
            torch.randn(n, n, device=dev, dtype=dtype, generator=g),
        )
        for _ in range(3)
    ]
    c = torch.empty(n, n, device=dev, dtype=dtype)
    reps, warm = (3, 1) if tiny else (30, 5)
    times = []
    for i in range(warm + reps):
        a, b = sets[i % len(sets)]
        if dev.startswith("cuda"):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            torch.matmul(a, b, out=c)
            e1.record()
            e1.synchronize()
            t = e0.elapsed_time(e1) / 1e3
        else:
            t0 = time.perf_counter()
            torch.matmul(a, b, out=c)
            t = time.perf_counter() - t0
        if i >= warm:
            times.append(t)
    med = statistics.median(times)
    tflops = 2 * n**3 / med / 1e12
    out = {
        "n": n,
        "dtype": str(dtype).replace("torch.", ""),
        "median_ms": round(med * 1e3, 3),
        "tflops_median": round(tflops, 1),
        "tflops_best": round(2 * n**3 / min(times) / 1e12, 1),
    }
    log(f"matmul {out}")
    del sets, c
    return out


def _padded_tokens(lengths, batch_size, max_batch_tokens) -> int:
    """Tokens the engine's length-sorted batches hold, padding included (no prefix cache)."""
    from optimus_lib.models.engine import _batches

    batches = _batches(lengths, batch_size, max_batch_tokens)
    return sum(max(lengths[i] for i in b) * len(b) for b in batches)


def _common_prefix(prompts: list[list[int]]) -> int:
    first, n = prompts[0], min(len(p) for p in prompts)
    for k in range(n):
        if any(p[k] != first[k] for p in prompts):
            return k
    return n


def bench_judge(shape, tok, dev, dtype, samples, rate_tflops, batch_cfgs, n_naive, repeats) -> dict:
    from optimus_lib.detect.llm_judge import LLMJudge
    from optimus_lib.models.engine import TransformersEngine

    reset_peak(dev)
    t0 = time.perf_counter()
    model = build_model(shape, tok, dev, dtype)
    sync(dev)
    build_s = time.perf_counter() - t0
    pc = param_counts(model)
    hidden, layers, *_ = SHAPES[shape]
    log(f"{shape}: built in {build_s:.1f}s, params {pc}")
    res: dict = {"shape": shape, "params": pc, "build_s": round(build_s, 1), "scan": []}

    engine = TransformersEngine(model, tok)
    judge = LLMJudge(engine)
    q = judge.questions[0]
    t0 = time.perf_counter()
    prompts = [judge.prompt_ids(s, q) for s in samples]
    prompt_s = time.perf_counter() - t0
    lengths = [len(p) for p in prompts]
    n_tok = sum(lengths)
    res["prompts"] = {
        "n": len(prompts),
        "tokens": n_tok,
        "len_min": min(lengths),
        "len_mean": round(n_tok / len(prompts), 1),
        "len_max": max(lengths),
        "build_prompts_s": round(prompt_s, 3),
    }
    vocab = model.get_output_embeddings().weight.shape[0]
    flops = 2 * pc["body"] * n_tok + 2 * hidden * vocab * len(prompts)
    floor_s = flops / (rate_tflops * 1e12) if rate_tflops else None
    res["flops"] = flops
    res["floor_s"] = floor_s

    # The engine may reuse the KV cache of the prompts' common prefix (the judge's system
    # message): time with it on and off when the engine has the switch.
    sets = [judge.yes_ids, judge.no_ids]
    has_pc = "prefix_cache" in inspect.signature(engine.next_token_probs).parameters
    modes = [True, False] if has_pc else [None]
    plen = _common_prefix(prompts)
    res["common_prefix_tokens"] = plen
    ref = None
    for bs, mbt in batch_cfgs:
        for mode in modes:
            kw = {} if mode is None else {"prefix_cache": mode}

            def scan(ps, kw=kw, fn=engine.next_token_probs):
                probs = fn(ps, sets, **kw)
                return probs[:, 1] / np.maximum(probs.sum(1), 1e-30)  # as LLMJudge._p_no

            engine.batch_size, engine.max_batch_tokens = bs, mbt
            scan(prompts[: 2 * bs])  # warm-up (kernels, allocator)
            reset_peak(dev)
            times = []
            for _ in range(repeats):
                sync(dev)
                t0 = time.perf_counter()
                p = scan(prompts)
                sync(dev)
                times.append(time.perf_counter() - t0)
            assert p.shape == (len(prompts),) and bool(np.isfinite(p).all())
            ref = p if ref is None else ref
            t = statistics.median(times)
            row = {
                "batch_size": bs,
                "max_batch_tokens": mbt,
                "prefix_cache": mode,
                "times_s": [round(x, 3) for x in times],
                "median_s": round(t, 3),
                "dialogs_per_s": round(len(prompts) / t, 1),
                "prompt_tokens_per_s": round(n_tok / t),
                "padded_tokens": _padded_tokens(lengths, bs, mbt),
                "floor_s": round(floor_s, 4) if floor_s else None,
                "measured_over_floor": round(t / floor_s, 2) if floor_s else None,
                "max_abs_diff_p_no_vs_first_row": float(np.abs(p - ref).max()),
                "peak_gib": peak_gib(dev),
            }
            res["scan"].append(row)
            log(f"{shape} judge scan {row}")

    # end to end, prompt building and injection variants included, default engine settings
    engine.batch_size, engine.max_batch_tokens = batch_cfgs[0]
    sync(dev)
    t0 = time.perf_counter()
    scores = judge.score(samples)
    sync(dev)
    t = time.perf_counter() - t0
    res["score_end_to_end"] = {
        "batch_size": engine.batch_size,
        "s": round(t, 3),
        "dialogs_per_s": round(len(samples) / t, 1),
        "n_scores": len(scores),
    }
    log(f"{shape} judge.score end-to-end {res['score_end_to_end']}")

    # the naive baseline: per-dialog generate(3 tokens), parse yes/no from the text
    if n_naive:
        sub = prompts[:n_naive]

        @torch.inference_mode()
        def naive(ids, model=model, pad_id=engine.pad_id):
            x = torch.tensor([ids], device=dev)
            out = model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=3,
                do_sample=False,
                top_p=None,
                top_k=None,
                temperature=None,
                pad_token_id=pad_id,
                eos_token_id=tok.eos_token_id,
            )
            text = tok.decode(out[0, x.shape[1] :], skip_special_tokens=True).strip().lower()
            return 1.0 if text.startswith("no") else 0.0 if text.startswith("yes") else 0.5

        for ids in sub[:3]:
            naive(ids)
        sync(dev)
        t0 = time.perf_counter()
        verdicts = [naive(ids) for ids in sub]
        sync(dev)
        t = time.perf_counter() - t0
        best = max(r["dialogs_per_s"] for r in res["scan"])
        res["naive"] = {
            "n": len(sub),
            "s": round(t, 3),
            "dialogs_per_s": round(len(sub) / t, 1),
            "ms_per_dialog": round(t / len(sub) * 1e3, 1),
            "judge_speedup": round(best / (len(sub) / t), 1),
            "parsed": sum(v != 0.5 for v in verdicts),
        }
        log(f"{shape} naive {res['naive']}")
    del engine, judge, model
    reset_peak(dev)
    return res


def bench_gen(shape, tok, dev, dtype, samples, n_batched, n_single, batch_sizes) -> dict:
    from optimus_lib.heal.healer import SYSTEM as HEAL_SYSTEM
    from optimus_lib.models.engine import TransformersEngine

    model = build_model(shape, tok, dev, dtype)
    engine = TransformersEngine(model, tok)
    prompts = [
        engine.chat_ids([{"role": "system", "content": HEAL_SYSTEM}, *s.prompt_messages()])
        for s in samples[: max(n_batched, n_single)]
    ]
    lens = [len(p) for p in prompts]
    kw = {"max_new_tokens": 48, "do_sample": True, "top_p": 0.95, "temperature": 0.7, "seed": 1}
    res: dict = {
        "shape": shape,
        "prompt_len_mean": round(sum(lens) / len(lens), 1),
        "max_new_tokens": 48,
        "rows": [],
    }
    for bs in [1, *batch_sizes]:
        n = n_single if bs == 1 else n_batched
        engine.batch_size, engine.max_batch_tokens = bs, 1 << 20
        engine.generate(prompts[: min(n, 2 * bs)], **kw)  # warm-up
        reset_peak(dev)
        sync(dev)
        t0 = time.perf_counter()
        replies = engine.generate(prompts[:n], **kw)
        sync(dev)
        t = time.perf_counter() - t0
        row = {
            "batch_size": bs,
            "n": n,
            "s": round(t, 3),
            "replies_per_s": round(n / t, 2),
            "nonempty": sum(bool(r) for r in replies),
            "peak_gib": peak_gib(dev),
        }
        res["rows"].append(row)
        log(f"{shape} generate {row}")
    single = res["rows"][0]["replies_per_s"]
    for row in res["rows"]:
        row["speedup_vs_single"] = round(row["replies_per_s"] / single, 1)
    del engine, model
    reset_peak(dev)
    return res


class _StepTimer:
    """TrainerCallback (built lazily) that times each optimizer step with a device sync."""

    @staticmethod
    def make(dev: str):
        from transformers import TrainerCallback

        class StepTimer(TrainerCallback):
            def __init__(self):
                self.times: list[float] = []
                self.t0 = 0.0

            def on_step_begin(self, args, state, control, **kw):
                sync(dev)
                self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                sync(dev)
                self.times.append(time.perf_counter() - self.t0)

        return StepTimer()


def _count_collator(trainer, counts: list[tuple[int, int]]):
    orig = trainer.data_collator

    def counting(features):
        batch = orig(features)
        m = batch["attention_mask"]
        counts.append((int(m.sum()), int(m.numel())))
        return batch

    trainer.data_collator = counting


def _train_row(stage, shape, timer, counts, warm, dev, n_trainable) -> dict:
    times = timer.times[warm:]
    toks = [c[0] for c in counts[warm : warm + len(times)]]
    padded = [c[1] for c in counts[warm : warm + len(times)]]
    row = {
        "stage": stage,
        "shape": shape,
        "steps_timed": len(times),
        "step_s_median": round(statistics.median(times), 4),
        "step_s_mean": round(sum(times) / len(times), 4),
        "tokens_per_step_mean": round(sum(toks) / len(toks), 1),
        "padded_tokens_per_step_mean": round(sum(padded) / len(padded), 1),
        "tokens_per_s": round(sum(toks) / sum(times)),
        "peak_gib": peak_gib(dev),
        "trainable_params": n_trainable,
    }
    log(f"train {row}")
    return row


def _train(trainer, profile: bool, what: str) -> None:
    if not profile:
        trainer.train()
        return
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    trainer.train()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
    print(f"--- cProfile {what}, top 25 by tottime ---")
    print("\n".join(buf.getvalue().splitlines()[:40]))


def _raw_fwd_bwd(trainer, dev: str, reps: int = 8) -> dict:
    """Forward+backward of the trained PEFT model on one collated batch, no Trainer loop."""
    model = trainer.model
    model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    keys = ("input_ids", "attention_mask", "labels")
    batch = {k: v.to(model.device) for k, v in batch.items() if k in keys}
    out = {}
    for gc_on in (True, False):
        if gc_on:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        else:
            model.gradient_checkpointing_disable()
        model.enable_input_require_grads()
        times = []
        for _ in range(reps + 2):
            sync(dev)
            t0 = time.perf_counter()
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
                loss = model(**batch).loss
            loss.backward()
            sync(dev)
            times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
        out["gc_on" if gc_on else "gc_off"] = round(statistics.median(times[2:]), 4)
    out["batch_shape"] = list(batch["input_ids"].shape)
    log(f"raw fwd+bwd {out}")
    return out


def bench_diag(shape, tok, dev, reps: int = 5) -> dict:
    """Where a LoRA training step's time goes: one PEFT forward+backward, batch 4 x 226
    with right padding, under variants (attention kernel, padding mask, weight dtype,
    gradient checkpointing), plus the top kernels of the default variant."""
    from peft import get_peft_model

    from optimus_lib.train.config import LoraConfig
    from optimus_lib.train.trainers import _lora

    g = torch.Generator().manual_seed(0)
    b, t = 4, 226
    ids = torch.randint(0, len(tok), (b, t), generator=g)
    lens = [t, t - 30, t - 60, t - 90]
    mask = torch.zeros(b, t, dtype=torch.long)
    for i, n in enumerate(lens):
        mask[i, :n] = 1
    labels = ids.masked_fill(mask == 0, -100)
    ids, mask, labels = ids.to(dev), mask.to(dev), labels.to(dev)
    res: dict = {"shape": shape, "batch": [b, t], "lens": lens, "rows": []}

    def one(model, attn_mask, autocast):
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=autocast and dev == "cuda"):
            loss = model(input_ids=ids, attention_mask=attn_mask, labels=labels).loss
        loss.backward()

    for wdtype in (torch.float32, torch.bfloat16):
        reset_peak(dev)
        model = get_peft_model(build_model(shape, tok, dev, wdtype), _lora(LoraConfig()))
        model.train()
        for gc_on in (True, False):
            if gc_on:
                model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
            else:
                model.gradient_checkpointing_disable()
            model.enable_input_require_grads()
            for attn in ("sdpa", "eager"):
                model.base_model.model.set_attn_implementation(attn)
                for masked in (True, False):
                    am = mask if masked else None
                    times = []
                    for _ in range(reps + 2):
                        sync(dev)
                        t0 = time.perf_counter()
                        one(model, am, wdtype == torch.float32)
                        sync(dev)
                        times.append(time.perf_counter() - t0)
                    model.zero_grad(set_to_none=True)
                    row = {
                        "weights": str(wdtype).replace("torch.", ""),
                        "grad_ckpt": gc_on,
                        "attn": attn,
                        "padding_mask": masked,
                        "fwd_bwd_s": round(statistics.median(times[2:]), 4),
                    }
                    res["rows"].append(row)
                    log(f"diag {row}")
        if wdtype == torch.float32:  # the trainers' setting: fp32 weights, bf16 autocast
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
            model.base_model.model.set_attn_implementation("sdpa")
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
            one(model, mask, True)
            with profile(activities=acts) as prof:
                one(model, mask, True)
                sync(dev)
            key = "self_cuda_time_total" if dev == "cuda" else "self_cpu_time_total"
            tab = prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60)
            print(f"--- torch.profiler, one fwd+bwd, {shape}, fp32+autocast, GC, sdpa, mask ---")
            print(tab)
            res["profile_table"] = tab
        del model
        reset_peak(dev)
    return res


def bench_train(shape, tok_path, dev, steps, warm, words, profile=False) -> list[dict]:
    """SFT then DPO (continuing the SFT adapter) with the settings of optimus_lib.train.trainers."""
    from datasets import Dataset
    from peft import PeftModel
    from trl import DPOConfig as TrlDPOConfig
    from trl import DPOTrainer, SFTTrainer
    from trl import SFTConfig as TrlSFTConfig

    from optimus_lib.train.config import DPOConfig, SFTConfig
    from optimus_lib.train.trainers import _common_args, _lora, build_dpo_pairs, build_sft_records

    tok = load_tok(tok_path)
    tok.padding_side = "right"  # as train_sft / train_dpo
    bs, max_len = 4, 256
    n = steps * bs
    samples = synth_samples(n, seed=7, words=words)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="optimus_bench_"))

    # --- SFT: train_sft loads the base in fp32 (load_model(..., "cpu")), the Trainer moves
    # it to the GPU and runs bf16 autocast; build it in fp32 directly on the device instead.
    scfg = SFTConfig(batch_size=bs, max_length=max_len)
    reset_peak(dev)
    model = build_model(shape, tok, dev, torch.float32)
    args = TrlSFTConfig(
        **_common_args(work / "sft", scfg.learning_rate, 1.0, bs, 1, 0, 10**6, False),
        max_length=max_len,
        completion_only_loss=True,
        packing=False,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(build_sft_records(samples, tok)),
        processing_class=tok,
        peft_config=_lora(scfg.lora),
    )
    timer, counts = _StepTimer.make(dev), []
    trainer.add_callback(timer)
    _count_collator(trainer, counts)
    ntr = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    _train(trainer, profile, f"SFT {shape}")
    row = _train_row("SFT", shape, timer, counts, warm, dev, ntr)
    row["gradient_checkpointing"] = bool(args.gradient_checkpointing)
    row["bf16"] = bool(args.bf16)
    if profile:
        row["raw_fwd_bwd"] = _raw_fwd_bwd(trainer, dev)
    rows.append(row)
    adapter = work / "sft_adapter"
    trainer.model.save_pretrained(str(adapter), selected_adapters=["default"])
    del trainer, model
    reset_peak(dev)

    # --- DPO: as train_dpo, PeftModel.from_pretrained(base, sft_adapter, is_trainable=True),
    # ref_model=None, so TRL copies the adapter into a frozen "ref" adapter.
    dcfg = DPOConfig(batch_size=bs, max_length=max_len)
    base = build_model(shape, tok, dev, torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter), is_trainable=True)
    healed = [turn(random.Random(i), 20) for i in range(len(samples))]
    args = TrlDPOConfig(
        **_common_args(work / "dpo", dcfg.learning_rate, 1.0, bs, 1, 0, 10**6, False),
        beta=dcfg.beta,
        max_length=max_len,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=Dataset.from_list(build_dpo_pairs(samples, healed, tok)),
        processing_class=tok,
    )
    timer, counts = _StepTimer.make(dev), []
    trainer.add_callback(timer)
    _count_collator(trainer, counts)
    ntr = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    _train(trainer, profile, f"DPO {shape}")
    row = _train_row("DPO", shape, timer, counts, warm, dev, ntr)
    row["adapters"] = sorted(trainer.model.peft_config)
    row["gradient_checkpointing"] = bool(args.gradient_checkpointing)
    row["bf16"] = bool(args.bf16)
    rows.append(row)
    del trainer, model, base
    reset_peak(dev)
    return rows


# ---- report --------------------------------------------------------------------------
def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def report(res: dict) -> str:
    out = []
    env = res["env"]
    out.append(
        f"device: {env['device']}; torch {env['torch']}, transformers {env['transformers']}, "
        f"trl {env.get('trl')}; {env['date']}"
    )
    if "matmul" in res:
        m = res["matmul"]
        out.append(
            f"\nmatmul {m['n']}^3 {m['dtype']}: {m['tflops_median']} TFLOP/s median "
            f"({m['median_ms']} ms), best {m['tflops_best']}"
        )
    if res.get("judge"):
        rows = []
        for j in res["judge"]:
            pr = j["prompts"]
            for s in j["scan"]:
                rows.append(
                    [
                        j["shape"],
                        f"{j['params']['body'] / 1e6:.0f}M",
                        pr["n"],
                        pr["len_mean"],
                        s["batch_size"],
                        s["prefix_cache"],
                        s["median_s"],
                        s["dialogs_per_s"],
                        s["prompt_tokens_per_s"],
                        s["floor_s"],
                        s["measured_over_floor"],
                        s["peak_gib"],
                    ]
                )
        pre = ", ".join(f"{j['shape']}: {j['common_prefix_tokens']}" for j in res["judge"])
        out.append(
            "\nLLM judge scan (next_token_probs + LLMJudge._p_no's normalisation, "
            f"logits_to_keep=1; common prefix tokens {pre})\n"
        )
        out.append(
            table(
                [
                    "shape",
                    "body params",
                    "dialogs",
                    "prompt len",
                    "batch",
                    "prefix cache",
                    "s",
                    "dialogs/s",
                    "prompt tok/s",
                    "FLOP floor s",
                    "measured/floor",
                    "peak GiB",
                ],
                rows,
            )
        )
        rows = []
        for j in res["judge"]:
            e = j["score_end_to_end"]
            nv = j.get("naive") or {}
            rows.append(
                [
                    j["shape"],
                    e["dialogs_per_s"],
                    j["prompts"]["build_prompts_s"],
                    nv.get("n"),
                    nv.get("dialogs_per_s"),
                    nv.get("ms_per_dialog"),
                    nv.get("judge_speedup"),
                ]
            )
        out.append("\nEnd-to-end judge.score vs naive per-dialog generate(3) + parse\n")
        out.append(
            table(
                [
                    "shape",
                    "score() dialogs/s",
                    "prompt build s (all)",
                    "naive n",
                    "naive dialogs/s",
                    "naive ms/dialog",
                    "scan speedup vs naive",
                ],
                rows,
            )
        )
    if res.get("gen"):
        rows = []
        for g in res["gen"]:
            for r in g["rows"]:
                rows.append(
                    [
                        g["shape"],
                        g["prompt_len_mean"],
                        r["batch_size"],
                        r["n"],
                        r["s"],
                        r["replies_per_s"],
                        r["speedup_vs_single"],
                        r["peak_gib"],
                    ]
                )
        out.append("\nHealing generation (engine.generate, 48 new tokens, top_p 0.95, T 0.7)\n")
        out.append(
            table(
                [
                    "shape",
                    "prompt len",
                    "batch",
                    "replies",
                    "s",
                    "replies/s",
                    "vs one at a time",
                    "peak GiB",
                ],
                rows,
            )
        )
    if res.get("train"):
        rows = [
            [
                r["stage"],
                r["shape"],
                r["steps_timed"],
                r["step_s_median"],
                r["tokens_per_step_mean"],
                r["tokens_per_s"],
                r["peak_gib"],
                r["trainable_params"],
            ]
            for r in res["train"]
        ]
        out.append(
            "\nTraining (TRL, LoRA r=16 all-linear, batch 4, max_length 256, bf16 autocast, "
            "gradient checkpointing = TRL default)\n"
        )
        out.append(
            table(
                [
                    "stage",
                    "shape",
                    "steps timed",
                    "step s (median)",
                    "tokens/step (non-pad)",
                    "tokens/s",
                    "peak GiB",
                    "trainable",
                ],
                rows,
            )
        )
    if res.get("diag"):
        d = res["diag"]
        rows = [
            [r["weights"], r["grad_ckpt"], r["attn"], r["padding_mask"], r["fwd_bwd_s"]]
            for r in d["rows"]
        ]
        out.append(f"\nDiag: one PEFT LoRA forward+backward, {d['shape']}, batch {d['batch']}\n")
        out.append(table(["weights", "grad ckpt", "attention", "padding mask", "s"], rows))
    for k, v in res.get("errors", {}).items():
        out.append(f"\nERROR in {k}: {v}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--tiny", action="store_true", help="tiny shapes and few dialogs (CPU smoke test)"
    )
    ap.add_argument(
        "--sections",
        default="matmul,judge,gen,train",
        help="comma list of matmul, judge, gen, train, diag (diag: where a LoRA step's time goes)",
    )
    ap.add_argument("--judge-shapes", default="0.5b,8b")
    ap.add_argument("--gen-shapes", default="0.5b")
    ap.add_argument("--train-shapes", default="0.5b,1.5b")
    ap.add_argument("--tok", default=None, help="tokenizer folder (default: the bundled model's)")
    ap.add_argument("--dialogs", type=int, default=500)
    ap.add_argument("--naive", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--json", default=None)
    ap.add_argument("--profile", action="store_true", help="cProfile the train loops")
    a = ap.parse_args(argv)

    import transformers

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    sections = a.sections.split(",")
    if a.tiny:
        shapes_j = shapes_g = shapes_t = ["tiny"]
        a.dialogs, a.naive, a.repeats, a.train_steps = 16, 3, 1, 4
        batch_cfgs = [(16, 8192)]
        gen_batched, gen_single, gen_bs = 4, 1, [4]
        train_warm = 1
    else:
        shapes_j, shapes_g, shapes_t = (
            a.judge_shapes.split(","),
            a.gen_shapes.split(","),
            a.train_shapes.split(","),
        )
        batch_cfgs = [(16, 8192), (64, 32768)]  # engine default, and a larger GPU batch
        gen_batched, gen_single, gen_bs = 64, 16, [16, 64]
        train_warm = 5
    try:
        import trl

        trl_v = trl.__version__
    except Exception as exc:  # reported, and the train section will fail on it
        trl_v = f"unavailable ({type(exc).__name__}: {exc})"
    res: dict = {
        "env": {
            "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl_v,
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "argv": sys.argv[1:],
            "dtype": str(dtype),
        },
        "errors": {},
    }
    tok = load_tok(a.tok)
    log(f"device {res['env']['device']}, vocab {len(tok)}")
    # ~150-250 prompt tokens once wrapped in the judge's system prompt and template
    samples = synth_samples(a.dialogs, seed=0, words=(20, 95))

    rate = None
    if "matmul" in sections:
        res["matmul"] = bench_matmul(dev, a.tiny)
        rate = res["matmul"]["tflops_median"]
    if "judge" in sections:
        res["judge"] = []
        for shape in shapes_j:
            try:
                res["judge"].append(
                    bench_judge(
                        shape, tok, dev, dtype, samples, rate, batch_cfgs, a.naive, a.repeats
                    )
                )
            except Exception as exc:
                res["errors"][f"judge/{shape}"] = f"{type(exc).__name__}: {exc}"
                log(f"judge {shape} failed: {exc!r}")
    if "gen" in sections:
        res["gen"] = []
        for shape in shapes_g:
            try:
                res["gen"].append(
                    bench_gen(shape, tok, dev, dtype, samples, gen_batched, gen_single, gen_bs)
                )
            except Exception as exc:
                res["errors"][f"gen/{shape}"] = f"{type(exc).__name__}: {exc}"
                log(f"gen {shape} failed: {exc!r}")
    if "diag" in sections:
        try:
            res["diag"] = bench_diag(shapes_t[0], tok, dev, reps=1 if a.tiny else 5)
        except Exception as exc:
            import traceback

            traceback.print_exc()
            res["errors"]["diag"] = f"{type(exc).__name__}: {exc}"
    if "train" in sections:
        res["train"] = []
        for shape in shapes_t:
            try:
                res["train"] += bench_train(
                    shape, a.tok, dev, a.train_steps, train_warm, (80, 190), a.profile
                )
            except Exception as exc:
                import traceback

                traceback.print_exc()
                res["errors"][f"train/{shape}"] = f"{type(exc).__name__}: {exc}"
                log(f"train {shape} failed: {exc!r}")

    tag = a.sections.replace(",", "-") + ("-tiny" if a.tiny else "")
    if a.json:
        path = Path(a.json)
    elif os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / f"gpu_bench_{tag}.json"
    else:
        path = Path("runs") / f"gpu_bench_{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, default=str))
    print("\n" + report(res))
    print(f"\nJSON: {path}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
