"""CPU benchmark of SFT step time for one training knob, on against off.

``--knob gradient_checkpointing`` (default): TRL's ``SFTConfig`` turns gradient
checkpointing on by default. That trades compute for activation memory, which matters
for a 7B model on a GPU but not for the bundled 135M model on a CPU, where it only
re-runs every layer's forward during the backward pass.

``--knob fused_lm_head``: TRL's fused LM head (log-probs in vocabulary tiles, recomputed
in the backward pass, plus entropy and accuracy for the logs) against the model's own
cross-entropy (``train.sft.fused_lm_head``; off on a CPU by default). Checkpointing is
off in this comparison, as in the examples.

``--knob bf16``: bf16 autocast against fp32 (``train.sft.bf16``; on by default where the
device has bf16 kernels). The other two knobs' comparisons run in fp32, so each measures
one change.

Both variants run ``optimus_lib.train.trainers.train_sft`` itself on the bundled model
(SmolLM2-135M-Instruct, CPU), on the same chit-chat records (the bundled poisoned
training set, prompts fitted to ``max_length``), with the same LoRA r=16 config, batch
size, seed and step count; only the knob differs. Variants are interleaved
``on off on off ...`` (``--rounds``) and each ratio is taken within a round (median over
rounds), since the machine may be shared.

Timing: a ``TrainerCallback`` records wall time from each step's begin to its end (the
optimizer step included); the first step of each run is dropped (allocator warm-up).
Reported: median s/step, tokens per second (non-pad tokens in the batches, from
``attention_mask``), and the loss after the last step (the two must match closely: the
same maths, only the memory/compute trade differs).

Usage::

    .venv/bin/python benchmarks/sft_bench.py --out runs/sft_bench.json
    .venv/bin/python benchmarks/sft_bench.py --knob fused_lm_head --max-length 64
    .venv/bin/python benchmarks/sft_bench.py --knob bf16 --max-length 64
    .venv/bin/python benchmarks/sft_bench.py --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def run_once(records, on: bool, args) -> dict:
    import trl
    from transformers import TrainerCallback

    from optimus_lib.train.config import SFTConfig
    from optimus_lib.train.trainers import StageRun, train_sft

    times: list[float] = []
    tokens: list[int] = []
    losses: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    orig = trl.SFTTrainer

    class Timed(orig):  # type: ignore[misc, valid-type]
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.add_callback(Timer())

        def training_step(self, model, inputs, *a, **kw):
            tokens.append(int(inputs["attention_mask"].sum()))
            return super().training_step(model, inputs, *a, **kw)

    trl.SFTTrainer = Timed
    try:
        knobs = {"gradient_checkpointing": False, "fused_lm_head": False, "bf16": False}
        knobs[args.knob] = on
        cfg = SFTConfig(
            learning_rate=2e-4,
            epochs=1,
            batch_size=args.batch_size,
            max_length=args.max_length,
            **knobs,
        )
        with tempfile.TemporaryDirectory() as d:
            run = StageRun("smollm2-135m-instruct", Path(d), save_steps=10_000, progress=False)
            train_sft(run, records, cfg)
    finally:
        trl.SFTTrainer = orig
    steady = times[1:] or times
    return {
        args.knob: on,
        "steps": len(times),
        "s_per_step": statistics.median(steady),
        "tok_per_s": sum(tokens[1:]) / sum(steady) if len(times) > 1 else None,
        "last_loss": losses[-1] if losses else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    knobs = ["gradient_checkpointing", "fused_lm_head", "bf16"]
    ap.add_argument("--knob", choices=knobs, default=knobs[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="2 steps, 1 round")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.steps, args.rounds = 2, 1

    from optimus_lib.models.specs import load_tokenizer
    from optimus_lib.threats.poison import build_training_set
    from optimus_lib.train.trainers import build_sft_records

    tok = load_tokenizer("smollm2-135m-instruct")
    samples = build_training_set(args.steps * args.batch_size, 0.3, seed=0, max_context_turns=2)
    records = build_sft_records(samples, tok, args.max_length)

    rounds = []
    for r in range(args.rounds):
        on = run_once(records, True, args)
        off = run_once(records, False, args)
        rounds.append(
            {"round": r, "on": on, "off": off, "speedup": on["s_per_step"] / off["s_per_step"]}
        )
        print(json.dumps(rounds[-1]), flush=True)

    print(
        f"\n| round | s/step, {args.knob} on | s/step, off | tok/s on | tok/s off "
        "| speed-up | last loss on / off |"
    )
    print("|---|---|---|---|---|---|---|")
    for x in rounds:
        on, off = x["on"], x["off"]
        print(
            f"| {x['round']} | {on['s_per_step']:.2f} | {off['s_per_step']:.2f} | "
            f"{on['tok_per_s']:.0f} | {off['tok_per_s']:.0f} | {x['speedup']:.2f}x | "
            f"{on['last_loss']} / {off['last_loss']} |"
        )
    med = statistics.median(x["speedup"] for x in rounds)
    print(f"\nmedian speed-up from turning {args.knob} off: {med:.2f}x")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"out": str(args.out)},
                    "rounds": rounds,
                    "median_speedup": med,
                },
                indent=1,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
