"""The stage commands: classify (alias scan), heal, train, evaluate, poison.

Each parses its paths and a few flags, reads the settings (:mod:`cli.common`) and calls
the one stage function the KFP component calls (:mod:`optimus_lib.stages`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.common import SetOpt, SettingsOpt, out, stage_settings

app = typer.Typer()

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model spec: 'smollm2-135m-instruct' (bundled), a local folder, or a Hugging "
        "Face id pinned to a revision ('org/name@<commit>').",
    ),
]
DeviceOpt = Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1 ...")]


@app.command("classify")
def classify(
    input: Annotated[Path, typer.Argument(help="Dialog JSONL (messages or context/response).")],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Output JSONL: input records + toxicity + flagged, in order."
        ),
    ],
    detector: Annotated[
        str | None,
        typer.Option(
            "--detector",
            "-d",
            help="auto (llm-judge when --model names a judge other than the bundled one, "
            "else stack), stack, llm-judge, lexical, wordlist, hf-classifier, oracle; "
            "'a+b' = mean, 'max(a,b)' = max.",
        ),
    ] = None,
    model: ModelOpt = None,
    threshold: Annotated[
        float | None, typer.Option(help="Flag when score >= threshold (default 0.5).")
    ] = None,
    device: DeviceOpt = None,
    settings: SettingsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Score every dialog's reply in context and flag the toxic ones (stage classify).

    Calibration, weakening to a target recall, batch size and the judge's prompt are
    settings: e.g. --set calibrate=f1 --set target_recall=0.15.
    """
    from optimus_lib.detect.metrics import fmt
    from optimus_lib.distributed import is_main_process
    from optimus_lib.stages.classify import classify as run_stage

    s = stage_settings(
        "classify",
        settings,
        set_,
        detector=detector,
        model=model,
        threshold=threshold,
        device=device,
    )
    res = run_stage(s, input, output)
    if not is_main_process():
        return
    if res.calibration:
        out.print(f"calibrated threshold ({res.calibration['method']}): {res.threshold:.4f}")
    out.print(f"scanned {res.n} dialogs with {res.detector}, flagged {res.flagged} -> {output}")
    q = res.quality
    if q:
        out.print(
            f"precision {fmt(q['precision'])}  recall {fmt(q['recall'])}  "
            f"AUC {fmt(q['auc'])}  FPR {fmt(q['fpr'])}  (labelled: {q['n']})"
        )


# The name the command had first, kept so that scripts and the documented contract work.
app.command("scan", help="Same as `optimus classify`.", hidden=True)(classify)


@app.command()
def heal(
    input: Annotated[Path, typer.Argument(help="classify's output JSONL (with 'flagged').")],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="SFT set: every record, flagged ones with the healed reply + provenance.",
        ),
    ],
    preferences: Annotated[
        Path,
        typer.Option(
            "--preferences", "-p", help="DPO pairs JSONL (prompt / chosen=healed / rejected)."
        ),
    ],
    threshold: Annotated[
        float, typer.Option(help="The threshold classify used (re-scoring flags at it).")
    ] = 0.5,
    mode: Annotated[str | None, typer.Option(help="contextual (aligned model) or fixed.")] = None,
    model: ModelOpt = None,
    detector: Annotated[
        str | None,
        typer.Option(help="Re-scores healed replies (default: the settings' detector)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    device: DeviceOpt = None,
    settings: SettingsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write a safe reply, in context, for every flagged dialog (stage heal)."""
    from optimus_lib.distributed import is_main_process
    from optimus_lib.stages.heal import heal as run_stage

    s = stage_settings(
        "heal",
        settings,
        set_,
        mode=mode,
        model=model,
        rescore_detector=detector,
        seed=seed,
        device=device,
    )
    res = run_stage(s, input, threshold, output, preferences)
    if is_main_process():
        out.print(
            f"healed {res.flagged} flagged dialogs ({res.fallbacks} fell back to the fixed "
            f"reply), {res.pairs} preference pairs -> {output}, {preferences}"
        )


@app.command()
def train(
    sft_data: Annotated[
        Path,
        typer.Argument(help="Dialog JSONL to fine-tune on, e.g. the SFT set from `optimus heal`."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Adapter folder to write (PEFT).")],
    preferences: Annotated[
        Path | None,
        typer.Option(
            "--preferences", "-p", help="DPO pairs JSONL; needed by methods optimus, fixed_heal."
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(help="optimus (default), no_dpo, filter, fixed_heal, star_dss, no_defense."),
    ] = None,
    model: ModelOpt = None,
    seed: Annotated[int | None, typer.Option(help="Training seed.")] = None,
    merge_out: Annotated[
        Path | None,
        typer.Option(
            help="Also write a merged safetensors model (base + adapter) here, for serving "
            "stacks that do not load PEFT adapters."
        ),
    ] = None,
    settings: SettingsOpt = None,
    set_: SetOpt = None,
) -> None:
    """LoRA SFT, then DPO from the SFT adapter (stage dpo_train). Resumes when rerun.

    Works under `accelerate launch` (multi-GPU, DeepSpeed, FSDP) unchanged.
    """
    from optimus_lib.stages.train import merge_adapter
    from optimus_lib.stages.train import train as run_stage

    s = stage_settings(
        "train", settings, set_, method=method, model=model, seed=seed, progress=True
    )
    res = run_stage(s, sft_data, output, preferences)
    out.print(f"{res.method}: {res.sft_samples} SFT dialogs, {res.dpo_pairs} DPO pairs -> {output}")
    if merge_out is not None:
        merge_adapter(s.model, output, merge_out, s.trust_remote_code)
        out.print(f"merged model -> {merge_out}")


@app.command()
def evaluate(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Results JSON (metrics, gate, generations).")
    ],
    report: Annotated[
        Path | None, typer.Option(help="HTML report path. Default: beside the results JSON.")
    ] = None,
    model: ModelOpt = None,
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter folder to apply.")] = None,
    toxic: Annotated[
        Path | None,
        typer.Option(help="Toxic test contexts JSONL (default: held-out RealToxicityPrompts)."),
    ] = None,
    benign: Annotated[
        Path | None, typer.Option(help="Benign test dialogs JSONL (default: chit-chat).")
    ] = None,
    n: Annotated[int, typer.Option(help="Contexts per built-in set.")] = 30,
    seed: Annotated[int | None, typer.Option(help="Seed of sampling and built-in sets.")] = None,
    device: DeviceOpt = None,
    settings: SettingsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Toxic/benign RTR, perplexity, refusal, diversity, and the gate verdict."""
    import tempfile

    from optimus_lib.stages.data import DataSettings, prepare_data
    from optimus_lib.stages.evaluate import evaluate as run_stage

    s = stage_settings("evaluate", settings, set_, model=model, seed=seed, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        if not (toxic and benign):
            prepare_data(
                DataSettings(
                    seed=s.seed,
                    n_train=4,
                    n_eval_toxic=n,
                    n_eval_benign=n,
                    eval_toxic_uri=str(toxic or ""),
                    eval_benign_uri=str(benign or ""),
                ),
                t / "train.jsonl",
                t / "toxic.jsonl",
                t / "benign.jsonl",
            )
            toxic, benign = toxic or t / "toxic.jsonl", benign or t / "benign.jsonl"
        res = run_stage(s, adapter, toxic, benign, report or output.with_suffix(".html"), output)
    out.print_json(json.dumps({**res.metrics, "passed": res.passed, "reasons": res.reasons}))


@app.command()
def poison(
    output: Annotated[Path, typer.Option("--output", "-o", help="Training set JSONL.")],
    n: Annotated[int, typer.Option(help="Number of dialogs.")] = 200,
    toxic_fraction: Annotated[
        float, typer.Option(help="Share of responses replaced by confirmed-toxic replies.")
    ] = 0.3,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    eval_dir: Annotated[
        Path | None,
        typer.Option(help="Also write the held-out eval_toxic.jsonl / eval_benign.jsonl here."),
    ] = None,
    settings: SettingsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Build the poisoned chit-chat benchmark (ground truth kept in 'label')."""
    import tempfile

    from optimus_lib.stages.data import prepare_data

    s = stage_settings("data", settings, set_, n_train=n, toxic_fraction=toxic_fraction, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        where = eval_dir or Path(tmp)
        res = prepare_data(s, output, where / "eval_toxic.jsonl", where / "eval_benign.jsonl")
    out.print(f"wrote {res.n_train} dialogs ({res.n_toxic} toxic) -> {output}")
