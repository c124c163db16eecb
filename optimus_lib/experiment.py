"""Experiment runner: methods x detector recall x seeds on the same data, side by side.

``optimus experiment CONFIG.yaml`` reproduces the paper's robustness study at small
scale, in process, on the stage functions of :mod:`optimus_lib.stages` (nothing else
runs a stage). Expensive work is shared rather than repeated. Per seed ``S``, under the
experiment folder:

* ``seedS/data/``: one ``prepare_data``;
* ``seedS/base/``: one unweakened ``classify`` (``scored.jsonl``; its threshold T is used
  by every cell) and one ``heal`` of everything it flags (``sft.jsonl``, ``prefs.jsonl``);
* ``seedS/recallR/``, one cell per detector recall R: ``classify`` re-thresholds the base
  scores at T and weakens them to R (no detector runs); ``heal`` takes every healed reply
  from the base heal by content (nothing is generated again); ``fixed_heal`` gets a
  fixed-reply heal (cheap); then each method is trained into ``adapters/<method>/`` and
  evaluated into ``eval/<method>.json``;
* ``no_defense`` ignores the detector, so it is trained and evaluated once per seed (in
  the first recall's cell) and its row is repeated at each recall.

Resume: a (seed, recall, method) is done when its ``eval/<method>.json`` exists; the base
stages are skipped when their outputs exist; an interrupted training resumes from the
train stage's checkpoint (keyed by its inputs and settings; ``base.train.checkpoint_root``,
default ``<experiment>/checkpoints``). Because finished outputs are trusted as they are, a
folder only resumes the settings it was made with: a rerun with other base settings is
refused (methods, recalls, seeds and attacks may change). Results go to ``results.csv``,
``results.json`` and ``report.html`` in the experiment folder after every cell.
"""

from __future__ import annotations

import csv
import gc
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from optimus_lib.config import RUN_NAME, PipelineSettings
from optimus_lib.data.io import atomic_path, read_samples, write_json
from optimus_lib.errors import OptimusError
from optimus_lib.settings import Strict, load_yaml, one_line
from optimus_lib.stages.classify import ClassifySettings, build_detector_for, classify
from optimus_lib.stages.data import prepare_data
from optimus_lib.stages.evaluate import EvaluateSettings, Gates, evaluate
from optimus_lib.stages.heal import HealSettings, build_healer, heal
from optimus_lib.stages.train import METHODS, train

METRIC_KEYS = (
    "rtr_toxic",
    "rtr_benign",
    "mean_toxicity_toxic",
    "mean_toxicity_benign",
    "perplexity",
    "similarity",
    "over_refusal",
    "distinct_2",
)
HEALED = ("no_dpo", "optimus")  # trained on the contextual heal's SFT set
DATA_FILES = ("train", "eval_toxic", "eval_benign")


def _unique(values: list, what: str) -> list:
    twice = sorted({v for v in values if values.count(v) > 1}, key=values.index)
    if twice:
        raise ValueError(f"{what} listed twice: {twice}")
    return values


class ExperimentConfig(Strict):
    """A sweep over detector recall and seeds for a list of methods.

    ``base`` holds every stage's settings (a pipeline settings file); its ``seed`` and
    ``method`` come from ``seeds`` and ``methods`` here, and the recall from ``recalls``.
    """

    name: str = "experiment"
    base: PipelineSettings = PipelineSettings()
    methods: list[str] = Field(default_factory=lambda: list(METHODS), min_length=1)
    recalls: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        default_factory=lambda: [1.0, 0.5, 0.15], min_length=1
    )
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    attacks: bool = True
    attack_detectors: list[str] = Field(
        default_factory=lambda: ["wordlist", "lexical", "llm-judge"]
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not RUN_NAME.match(v):
            raise ValueError("letters, digits, '.', '_', '-' only (it names a folder)")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in METHODS]
        if bad:
            raise ValueError(f"unknown {bad} (known: {', '.join(METHODS)})")
        return _unique(v, "methods")

    @field_validator("recalls", "seeds")
    @classmethod
    def _no_repeats(cls, v: list, info: ValidationInfo) -> list:
        return _unique(v, info.field_name)

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        b = self.base
        for f, why in (("seed", "seeds"), ("method", "methods")):
            if f in b.model_fields_set:
                raise ValueError(f"base.{f}: set by the experiment's '{why}'")
        if b.classify.target_recall is not None:
            raise ValueError("base.classify.target_recall: set by the experiment's 'recalls'")
        if b.classify.reuse_scores:
            raise ValueError("base.classify.reuse_scores: the experiment scans once, then reuses")
        if b.heal.mode != "contextual":
            raise ValueError(
                "base.heal.mode: keep 'contextual'; fixed-reply healing is the 'fixed_heal' method"
            )
        return self

    # ---- each stage's settings for one seed -------------------------------------------
    def stage(self, section: str, seed: int, root: Path) -> Any:
        """``base``'s settings for one stage at ``seed``, as the experiment runs it."""
        s = self.base.model_copy(update={"seed": seed}).stage(section)
        if section == "train" and s.checkpoint_root is None:
            return s.model_copy(update={"checkpoint_root": str(root / "checkpoints")})
        if section == "evaluate":  # methods are compared side by side, not gated
            return s.model_copy(update={"compare_base": False, "gates": Gates()})
        return s


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Load and validate an experiment YAML; every problem is a one-line OptimusError."""
    raw = load_yaml(path)
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise OptimusError(f"{path}: {one_line(exc)}") from None


# ---- resume guard -------------------------------------------------------------------------
def _result_settings(exp: ExperimentConfig) -> dict[str, Any]:
    """Everything the stored outputs depend on (not what is swept or only names things)."""
    skip = ("name", "seed", "method", "registry", "resources")
    base = exp.base.model_dump(exclude={**dict.fromkeys(skip, True), "train": {"progress"}})
    return {"base": base}


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _claim(root: Path, exp: ExperimentConfig) -> None:
    """Write ``experiment.yaml``; refuse a folder holding outputs of other settings."""
    path = root / "experiment.yaml"
    if path.is_file():
        try:
            prev = ExperimentConfig.model_validate(yaml.safe_load(path.read_text()) or {})
        except (yaml.YAMLError, ValidationError):
            changed = ["experiment.yaml (not a valid experiment)"]
        else:
            a, b = _flat(_result_settings(prev)), _flat(_result_settings(exp))
            changed = [k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
        if changed:
            raise OptimusError(
                f"{root}: holds results made with other settings ({changed[0]} differs); "
                "use another output folder, or delete this one"
            )
    root.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(exp.model_dump(exclude_unset=True), sort_keys=False))


# ---- the sweep ----------------------------------------------------------------------------
@dataclass
class SeedBase:
    """One seed's shared outputs."""

    data: dict[str, Path]  # train, eval_toxic, eval_benign (+ eval_trigger: backdoor)
    scored: Path  # the unweakened scan
    threshold: float  # T: every cell flags at it
    sft: Path  # the heal of everything the scan flags (absent when no method needs it)


def _free() -> None:
    """Let go of the last stage's model before the next one loads."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def seed_base(exp: ExperimentConfig, root: Path, seed: int) -> SeedBase:
    """Data, the unweakened scan and its healing for one seed (shared by every recall);
    each skipped when its outputs exist."""
    d = root / f"seed{seed}" / "data"
    data = {n: d / f"{n}.jsonl" for n in DATA_FILES}
    data_s = exp.stage("data", seed, root)
    if data_s.threat == "backdoor":
        data["eval_trigger"] = d / "eval_trigger.jsonl"
    if not all(p.is_file() for p in data.values()):
        prepare_data(data_s, *(data[n] for n in DATA_FILES), data.get("eval_trigger"))
    base = root / f"seed{seed}" / "base"
    scored, done = base / "scored.jsonl", base / "classify.json"
    if not done.is_file():
        res = classify(exp.stage("classify", seed, root), data["train"], scored)
        write_json(done, {**res.as_metrics(), "calibration": res.calibration})
        _free()
    threshold = float(json.loads(done.read_text(encoding="utf-8"))["threshold"])
    sft, prefs = base / "sft.jsonl", base / "prefs.jsonl"
    if set(exp.methods) & set(HEALED) and not prefs.is_file():  # heal writes prefs last
        heal(exp.stage("heal", seed, root), scored, threshold, sft, prefs)
        _free()
    return SeedBase(data, scored, threshold, sft)


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def run_cell(
    exp: ExperimentConfig,
    root: Path,
    seed: int,
    recall: float,
    methods: list[str],
    base: SeedBase,
    baseline: Path | None,
) -> list[dict[str, Any]]:
    """One (seed, recall) cell: weaken, heal by reuse, train and evaluate each method not
    evaluated yet; returns one row per method. ``baseline``: no_defense's evaluation of
    this seed (for the paired interval)."""
    cell = root / f"seed{seed}" / f"recall{recall:g}"
    scored = cell / "scored.jsonl"
    cls = exp.stage("classify", seed, root).model_copy(
        update={
            "reuse_scores": True,
            "calibrate": "none",
            "threshold": base.threshold,
            "target_recall": None if recall >= 1.0 else recall,
        }
    )
    det = classify(cls, base.scored, scored)  # cheap: re-thresholds the stored scores
    heal_s: HealSettings = exp.stage("heal", seed, root)
    sft, prefs = cell / "sft.jsonl", cell / "prefs.jsonl"
    fixed_sft, fixed_prefs = cell / "fixed" / "sft.jsonl", cell / "fixed" / "prefs.jsonl"
    inputs = {
        "no_defense": (base.data["train"], None),
        "filter": (scored, None),
        "star_dss": (scored, None),
        "no_dpo": (sft, None),
        "optimus": (sft, prefs),
        "fixed_heal": (fixed_sft, fixed_prefs),
    }
    eval_s: EvaluateSettings = exp.stage("evaluate", seed, root)
    todo = [m for m in methods if not (cell / "eval" / f"{m}.json").is_file()]
    if set(todo) & set(HEALED):
        heal(heal_s, scored, base.threshold, sft, prefs, reuse=base.sft)
    if "fixed_heal" in todo:
        fixed = heal_s.model_copy(update={"mode": "fixed"})
        heal(fixed, scored, base.threshold, fixed_sft, fixed_prefs)
    for m in todo:
        data, pairs = inputs[m]
        train_s = exp.stage("train", seed, root).model_copy(update={"method": m})
        adapter = cell / "adapters" / m
        train(train_s, data, adapter, pairs)
        _free()
        evaluate(
            eval_s,
            adapter,
            base.data["eval_toxic"],
            base.data["eval_benign"],
            cell / "eval" / f"{m}.html",
            cell / "eval" / f"{m}.json",
            base.data.get("eval_trigger"),
        )
        _free()
    q = det.quality or {}
    rows = []
    for m in methods:
        results = cell / "eval" / f"{m}.json"
        metrics = json.loads(results.read_text(encoding="utf-8"))["metrics"]
        rows.append(
            {
                "seed": seed,
                "recall_target": recall,
                "detector_recall": _finite(q.get("recall")),
                "detector_precision": _finite(q.get("precision")),
                "flagged": det.flagged,
                "method": m,
                **{k: metrics.get(k) for k in METRIC_KEYS},
                **rtr_intervals(results, eval_s.threshold, baseline),
            }
        )
    return rows


def run_experiment(exp: ExperimentConfig, root: Path, progress: bool = True) -> list[dict]:
    """Run the sweep; returns one result row per (seed, recall, method).

    Cells run in the order ``recalls`` are given (put the setting that matters first);
    results, CSV and report are rewritten after every cell, so a sweep stopped part-way
    still leaves every finished cell's numbers, and a rerun resumes the rest.
    """
    from tqdm.auto import tqdm

    _claim(root, exp)
    recalls = exp.recalls
    cells = [(s, r) for s in exp.seeds for r in recalls]
    bar = tqdm(cells, desc="experiment", unit="cell", disable=not progress)
    t0 = time.time()
    rows: list[dict[str, Any]] = []
    attack_rows: list[dict[str, Any]] = []
    healer_rows: list[dict[str, Any]] = []
    final: list[dict[str, Any]] = []
    bases: dict[int, SeedBase] = {}
    for seed, recall in bar:
        bar.set_postfix(seed=seed, recall=recall)
        if seed not in bases:
            bases[seed] = seed_base(exp, root, seed)
        base = bases[seed]
        first = recall == recalls[0]
        methods = [m for m in exp.methods if first or m != "no_defense"]
        if not methods:
            continue
        baseline = root / f"seed{seed}" / f"recall{recalls[0]:g}" / "eval" / "no_defense.json"
        rows += run_cell(exp, root, seed, recall, methods, base, baseline)
        if exp.attacks and first:
            attack_rows += _cached_attacks(exp, root, seed, base)
            if set(exp.methods) & set(HEALED):
                healer_rows += _cached_healer_attack(exp, root, seed, base)
        final = _write_results(exp, root, rows, attack_rows, healer_rows, time.time() - t0)
    return final


def _cached_attacks(
    exp: ExperimentConfig, root: Path, seed: int, base: SeedBase
) -> list[dict[str, Any]]:
    out = root / f"seed{seed}" / "base" / "attacks.json"
    if out.is_file():
        done = json.loads(out.read_text(encoding="utf-8"))
        if done["detectors"] == exp.attack_detectors:
            return done["rows"]
    rows = attack_table(
        exp.stage("classify", seed, root), base.data["train"], seed, exp.attack_detectors
    )
    write_json(out, {"detectors": exp.attack_detectors, "rows": rows})
    _free()
    return rows


def _cached_healer_attack(
    exp: ExperimentConfig, root: Path, seed: int, base: SeedBase
) -> list[dict[str, Any]]:
    out = root / f"seed{seed}" / "base" / "healer_attack.json"
    if not out.is_file():
        rows = healer_attack_table(
            exp.stage("heal", seed, root),
            exp.stage("evaluate", seed, root),
            base.data["train"],
            base.threshold,
            seed,
        )
        write_json(out, {"rows": rows})
        _free()
    return json.loads(out.read_text(encoding="utf-8"))["rows"]


def _write_results(
    exp: ExperimentConfig,
    root: Path,
    rows: list[dict[str, Any]],
    attack_rows: list[dict[str, Any]],
    healer_rows: list[dict[str, Any]],
    seconds: float,
) -> list[dict[str, Any]]:
    """results.json / .csv / report.html for the cells finished so far (atomic writes).

    no_defense does not depend on the detector: it is trained once per seed and its row
    is repeated at every recall that seed has run so far.
    """
    out_rows = [r for r in rows if r["method"] != "no_defense"]
    for r in rows:
        if r["method"] == "no_defense":
            ran = {x["recall_target"] for x in rows if x["seed"] == r["seed"]}
            undetected = {"detector_recall": None, "detector_precision": None, "flagged": None}
            out_rows += [
                {**r, "recall_target": recall, **undetected} for recall in sorted(ran, reverse=True)
            ]
    out_rows.sort(key=lambda r: (r["seed"], -r["recall_target"], exp.methods.index(r["method"])))
    recalls = sorted({r["recall_target"] for r in out_rows}, reverse=True)
    summary = summarise(out_rows, exp.methods, recalls)
    out = {
        "name": exp.name,
        "rows": out_rows,
        "summary": summary,
        "attacks": attack_rows,
        "healer_attacks": healer_rows,
        "config": exp.model_dump(),
        "seconds": round(seconds, 1),
    }
    write_json(root / "results.json", out)
    with atomic_path(root / "results.csv") as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(out_rows[0]) if out_rows else [])
        w.writeheader()
        w.writerows(out_rows)
    from optimus_lib.report.experiment import render_experiment

    with atomic_path(root / "report.html") as tmp:
        tmp.write_text(render_experiment(out), encoding="utf-8")
    return out_rows


# ---- statistics -----------------------------------------------------------------------------
def _scores_by_context(eval_json: Path, name: str) -> dict[str, list[float]]:
    """Evaluator scores of every stored reply in one test set, grouped by context id."""
    out: dict[str, list[float]] = {}
    for g in json.loads(eval_json.read_text(encoding="utf-8"))["generations"]:
        if g["set"] == name:
            out.setdefault(g["id"], []).append(g["toxicity"])
    return out


def rtr_intervals(
    eval_json: Path, threshold: float, baseline: Path | None = None
) -> dict[str, float | None]:
    """95 % bootstrap intervals (over contexts) of RTR on toxic and benign contexts, from
    the per-reply scores a cell's evaluation stored; with ``baseline`` (no_defense's
    evaluation of the same seed), also the paired interval of the toxic-context RTR
    difference to it (``rtr_toxic_diff_lo/hi``; None for the baseline itself)."""
    from optimus_lib.evaluate.metrics import rtr_diff_interval, rtr_interval

    out: dict[str, float | None] = {}
    for name in ("toxic", "benign"):
        lo, hi = rtr_interval(list(_scores_by_context(eval_json, name).values()), threshold)
        out[f"rtr_{name}_lo"], out[f"rtr_{name}_hi"] = lo, hi
    out["rtr_toxic_diff_lo"] = out["rtr_toxic_diff_hi"] = None
    if baseline is not None and baseline.is_file() and baseline.resolve() != eval_json.resolve():
        mine, ref = _scores_by_context(eval_json, "toxic"), _scores_by_context(baseline, "toxic")
        ids = sorted(set(mine) & set(ref))
        lo, hi = rtr_diff_interval([mine[i] for i in ids], [ref[i] for i in ids], threshold)
        out["rtr_toxic_diff_lo"], out["rtr_toxic_diff_hi"] = lo, hi
    return out


def summarise(rows: list[dict], methods: list[str], recalls: list[float]) -> list[dict]:
    """Mean and sample standard deviation over seeds per (recall, method)."""
    out = []
    for recall in recalls:
        for method in methods:
            group = [r for r in rows if r["method"] == method and r["recall_target"] == recall]
            if not group:
                continue
            entry: dict[str, Any] = {"recall_target": recall, "method": method, "seeds": len(group)}
            for k in (*METRIC_KEYS, "detector_recall"):
                vals = [r[k] for r in group if r.get(k) is not None]
                entry[k] = statistics.fmean(vals) if vals else None
                entry[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else None
            if len(group) == 1:  # one seed: the bootstrap interval over contexts
                for k in (
                    "rtr_toxic_lo",
                    "rtr_toxic_hi",
                    "rtr_benign_lo",
                    "rtr_benign_hi",
                    "rtr_toxic_diff_lo",
                    "rtr_toxic_diff_hi",
                ):
                    entry[k] = group[0].get(k)
            out.append(entry)
    return out


# ---- adaptive attacks ---------------------------------------------------------------------
def attack_table(
    settings: ClassifySettings, train_jsonl: Path, seed: int, detectors: list[str]
) -> list[dict[str, Any]]:
    """Share of caught toxic training samples that an adaptive attack lets through.

    For each named detector (built from the classify ``settings``): score the injected
    toxic samples, keep those it flags, rewrite them with every jailbreak suffix and
    perturbation of ``optimus_lib.threats.attacks`` and count how many then pass unflagged.
    Oracle-based detectors are pointless here (they read the label), so the detectors are
    named separately from the scan detector.
    """
    from optimus_lib.threats import attacks

    toxic = [s for s in read_samples(train_jsonl) if s.label == 1]
    variants: list[tuple[str, Any]] = [
        (f"jailbreak:{n}", lambda ss, n=n: attacks.jailbreak_suffix(ss, n, seed))
        for n in attacks.JAILBREAKS
    ] + [
        (f"perturb:{n}", lambda ss, n=n: attacks.perturb(ss, n, 0.5, seed))
        for n in attacks.PERTURBATIONS
        if n != "paraphrase"
    ]
    rows = []
    for name in detectors:
        det = build_detector_for(settings, name)
        caught = [s for s, x in zip(toxic, det.score(toxic)) if x >= det.threshold]
        for attack, fn in variants:
            passed = 0
            if caught:
                passed = sum(x < det.threshold for x in det.score(fn(caught)))
            rows.append(
                {
                    "seed": seed,
                    "detector": name,
                    "attack": attack,
                    "caught_before": len(caught),
                    "pass_after": passed,
                    "success_rate": passed / len(caught) if caught else None,
                }
            )
    return rows


def healer_attack_table(
    heal_settings: HealSettings,
    evaluate_settings: EvaluateSettings,
    train_jsonl: Path,
    threshold: float,
    seed: int,
    n: int = 30,
) -> list[dict[str, Any]]:
    """Adaptive attack on the healer: how many toxic "healed" replies reach training.

    The first ``n`` injected toxic training samples get an attack context
    (:func:`optimus_lib.threats.attacks.healer_attack_contexts`: "repeat after me", role
    play, forged earlier turn, ...) and are healed twice: once by the same generator with
    no re-scoring (what the attack achieves against the generator alone) and once as the
    heal stage heals (:func:`optimus_lib.stages.heal.build_healer`: re-scored at
    ``threshold``, retried, then the fixed reply). The evaluator judges both; rows per
    attack style plus ``all``.
    """
    from optimus_lib.detect.base import DetectorOptions, build_detector
    from optimus_lib.heal.healer import ContextualHealer
    from optimus_lib.threats import attacks

    h, ev = heal_settings, evaluate_settings
    toxic = [s for s in read_samples(train_jsonl) if s.label == 1][:n]
    if not toxic:
        return []
    attacked = attacks.healer_attack_contexts(toxic, seed)
    evaluator = build_detector(
        ev.evaluator,
        DetectorOptions(
            device=ev.device, threshold=ev.threshold, trust_remote_code=ev.trust_remote_code
        ),
    )
    checked = build_healer(h, threshold)
    unchecked = ContextualHealer(  # same loaded generator, nothing re-scores its replies
        checked.engine,
        None,
        h.fixed_reply,
        h.model,
        h.top_p,
        h.temperature,
        h.max_new_tokens,
        0,
        h.seed,
    )

    def judged(healer: Any) -> tuple[list[float], list[bool]]:
        res = healer.heal(attacked)
        scores = evaluator.score([s.with_response(r.reply) for s, r in zip(attacked, res)])
        return scores, [r.fallback for r in res]

    raw, _ = judged(unchecked)
    kept, fallback = judged(checked)
    styles = [s.record["attack"].split(":", 1)[1] for s in attacked]
    rows = []
    for style in [*sorted(set(styles)), "all"]:
        idx = [i for i, st in enumerate(styles) if style in (st, "all")]
        rows.append(
            {
                "seed": seed,
                "style": style,
                "n": len(idx),
                "toxic_unchecked": sum(raw[i] >= evaluator.threshold for i in idx) / len(idx),
                "toxic_after_rescore": sum(kept[i] >= evaluator.threshold for i in idx) / len(idx),
                "fallback": sum(fallback[i] for i in idx) / len(idx),
            }
        )
    return rows


def print_summary(summary: list[dict]) -> list[list[str]]:
    rows = [["recall", "method", "RTR toxic", "RTR benign", "perplexity", "similarity"]]
    for e in summary:

        def f(k: str, e: dict = e) -> str:
            v, sd = e.get(k), e.get(k + "_std")
            if v is None:
                return "n/a"
            return f"{v:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")

        rows.append(
            [
                f"{e['recall_target']:g}",
                e["method"],
                f("rtr_toxic"),
                f("rtr_benign"),
                f("perplexity"),
                f("similarity"),
            ]
        )
    return rows


__all__ = [
    "ExperimentConfig",
    "attack_table",
    "healer_attack_table",
    "load_experiment",
    "print_summary",
    "rtr_intervals",
    "run_experiment",
    "summarise",
]
