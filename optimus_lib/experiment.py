"""Experiment runner: methods x detector recall x seeds on the same data, side by side.

``optimus experiment CONFIG.yaml`` reproduces the paper's robustness study at small
scale. Expensive work is shared rather than repeated:

* per seed, one data build, one detector scan and one healing pass (over everything the
  unweakened detector flags); every weakened-recall setting reuses those scores and
  healed replies, because a weakened detector flags a subset of the same samples;
* ``no_defense`` ignores the detector, so it is trained and evaluated once per seed and
  its row is repeated at each recall.

Every (seed, recall) cell is an ordinary run folder, so it resumes like ``optimus run``.
Results go to ``results.csv``, ``results.json`` and ``report.html`` in the experiment
folder.
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from optimus_lib.config import RunConfig, _one_line, _Strict
from optimus_lib.data.io import atomic_path, write_json
from optimus_lib.errors import OptimusError
from optimus_lib.pipeline import (
    METHOD_PLAN,
    Run,
    detector_quality,
    obj_hash,
    scan_threshold,
    stage_data,
    stage_evaluate,
    stage_heal,
    stage_merge,
    stage_scan,
    stage_train,
)

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


class ExperimentConfig(_Strict):
    """A sweep over detector recall and seeds for a list of methods."""

    name: str = "experiment"
    base: RunConfig = RunConfig()
    methods: list[str] = ["no_defense", "filter", "fixed_heal", "no_dpo", "star_dss", "optimus"]
    recalls: list[float] = Field(default_factory=lambda: [1.0, 0.5, 0.15])
    seeds: list[int] = Field(default_factory=lambda: [0])
    attacks: bool = True
    attack_detectors: list[str] = Field(
        default_factory=lambda: ["wordlist", "lexical", "llm-judge"]
    )


def load_experiment(path: Path) -> ExperimentConfig:
    if not path.is_file():
        raise OptimusError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise OptimusError(f"{path}: invalid YAML ({exc})") from None
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise OptimusError(f"{path}: {_one_line(exc)}") from None
    bad = [m for m in cfg.methods if m not in METHOD_PLAN]
    if bad:
        raise OptimusError(f"{path}: methods: unknown {bad} (known: {', '.join(METHOD_PLAN)})")
    if not cfg.recalls or any(not 0 < r <= 1 for r in cfg.recalls):
        raise OptimusError(f"{path}: recalls: each must be in (0, 1]")
    return cfg


def _cell_cfg(
    exp: ExperimentConfig, seed: int, recall: float | None, methods: list[str]
) -> RunConfig:
    data = exp.base.model_dump()
    data.update(seed=seed, methods=methods or ["no_defense"])
    data["scan"]["target_recall"] = None if recall is None or recall >= 1.0 else recall
    return RunConfig.model_validate(data)


def _seed_base(exp: ExperimentConfig, root: Path, seed: int, progress: bool) -> Run:
    """Data, unweakened scan and healing for one seed (shared by every recall)."""
    needs_heal = any(METHOD_PLAN[m][0] == "healed" for m in exp.methods)
    run = Run(_cell_cfg(exp, seed, None, ["optimus"]), root / f"seed{seed}" / "base", progress)
    paths = stage_data(run)
    scan = stage_scan(run, paths["train"])
    if needs_heal:
        stage_heal(run, scan)
    run.release()
    return run


def run_experiment(exp: ExperimentConfig, root: Path, progress: bool = True) -> list[dict]:
    """Run the sweep; returns one result row per (seed, recall, method).

    Cells run in the order ``recalls`` are given (put the setting that matters first);
    results, CSV and report are rewritten after every cell, so a sweep stopped part-way
    still leaves every finished cell's numbers, and a rerun resumes the rest.
    """
    from tqdm.auto import tqdm

    root.mkdir(parents=True, exist_ok=True)
    (root / "experiment.yaml").write_text(yaml.safe_dump(exp.model_dump(), sort_keys=False))
    rows: list[dict[str, Any]] = []
    recalls = list(dict.fromkeys(exp.recalls))
    cells = [(s, r) for s in exp.seeds for r in recalls]
    bar = tqdm(cells, desc="experiment", unit="cell", disable=not progress)
    t0 = time.time()
    attack_rows: list[dict[str, Any]] = []
    healer_rows: list[dict[str, Any]] = []
    final: list[dict[str, Any]] = []
    for seed, recall in bar:
        bar.set_postfix(seed=seed, recall=recall)
        base = _seed_base(exp, root, seed, progress)
        first = recall == recalls[0]
        methods = [m for m in exp.methods if first or m != "no_defense"]
        if not methods:
            continue
        cfg = _cell_cfg(exp, seed, recall, methods)
        cell = Run(cfg, root / f"seed{seed}" / f"recall{recall:g}", progress)
        # The data files and their stage key come from the seed's base run.
        for name in ("train", "eval_toxic", "eval_benign"):
            dst = cell.dir / "data" / f"{name}.jsonl"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(base.dir / "data" / f"{name}.jsonl", dst)
        cell.done("data", base.keys["data"])
        paths = stage_data(cell)
        scan = stage_scan(cell, paths["train"], base_scan=base.dir / "scan.jsonl")
        heal = None
        if any(METHOD_PLAN[m][0] == "healed" for m in methods):
            heal = stage_heal(cell, scan, cache=base.dir / "heal.jsonl")
        adapters = stage_train(cell, scan, heal)
        if cfg.train.merge:
            stage_merge(cell, adapters)
        results = stage_evaluate(cell, adapters, paths["eval_toxic"], paths["eval_benign"])
        det = detector_quality(scan, scan_threshold(cell), cfg.scan.detector) or {}
        for method, m in results.items():
            rows.append(
                {
                    "seed": seed,
                    "recall_target": recall,
                    "detector_recall": det.get("recall"),
                    "detector_precision": det.get("precision"),
                    "flagged": det.get("flagged"),
                    "method": method,
                    **{k: m.get(k) for k in METRIC_KEYS},
                    **rtr_intervals(
                        cell.dir / "eval" / f"{method}.json",
                        cfg.evaluate.threshold,
                        root / f"seed{seed}" / f"recall{recalls[0]:g}" / "eval" / "no_defense.json",
                    ),
                }
            )
        if exp.attacks and first:
            attack_rows += attack_table(base, seed, exp.attack_detectors)
            if any(METHOD_PLAN[m][0] == "healed" for m in exp.methods):
                healer_rows += healer_attack_table(base, seed)
        final = _write_results(exp, root, rows, attack_rows, healer_rows, time.time() - t0)
    return final


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
        w = csv.DictWriter(fh, fieldnames=list(out_rows[0]))
        w.writeheader()
        w.writerows(out_rows)
    from optimus_lib.report.experiment import render_experiment

    with atomic_path(root / "report.html") as tmp:
        tmp.write_text(render_experiment(out), encoding="utf-8")
    return out_rows


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
    if baseline is not None and baseline.is_file() and baseline != eval_json:
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


def attack_table(base: Run, seed: int, detectors: list[str]) -> list[dict[str, Any]]:
    """Share of caught toxic training samples that an adaptive attack lets through.

    For each named detector: score the injected toxic samples, keep those it flags, rewrite
    them with every jailbreak suffix and perturbation of ``optimus_lib.threats.attacks`` and count
    how many then pass unflagged. Oracle-based detectors are pointless here (they read the
    label), so the detectors are named separately from the scan detector.
    """
    from optimus_lib.threats import attacks
    from optimus_lib.detect.base import DetectorOptions, build_detector
    from optimus_lib.pipeline import load

    cfg = base.cfg
    toxic = [s for s in load(base.dir / "data" / "train.jsonl") if s.label == 1]
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
        opts = DetectorOptions(
            model=cfg.scan.model or cfg.model,
            device=cfg.device,
            batch_size=cfg.scan.batch_size,
            threshold=cfg.scan.threshold,
        )
        det = build_detector(name, opts)
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


def healer_attack_table(base: Run, seed: int, n: int = 30) -> list[dict[str, Any]]:
    """Adaptive attack on the healer: how many toxic "healed" replies reach training.

    The first ``n`` injected toxic training samples get an attack context
    (:func:`optimus_lib.threats.attacks.healer_attack_contexts`: "repeat after me", role play,
    forged earlier turn, ...) and are healed twice with the run's healer settings: once
    with no re-scoring (what the attack achieves against the generator alone) and once as
    the pipeline heals (re-scored by ``heal.rescore_detector`` or the scan detector, with
    retries, then the fixed reply). The independent evaluator judges both; rows per attack
    style plus ``all``. Cached in the seed's base folder like any stage.
    """
    from optimus_lib.threats import attacks
    from optimus_lib.detect.base import DetectorOptions, build_detector
    from optimus_lib.heal.healer import ContextualHealer
    from optimus_lib.pipeline import load

    cfg, h = base.cfg, base.cfg.heal
    out = base.dir / "healer_attack.json"
    toxic = [s for s in load(base.dir / "data" / "train.jsonl") if s.label == 1][:n]
    key = obj_hash(
        {
            "heal": h.model_dump(),
            "model": cfg.model,
            "evaluator": cfg.evaluate.evaluator,
            "threshold": cfg.evaluate.threshold,
            "samples": [s.id for s in toxic],
            "scan": cfg.scan.detector,
        }
    )

    def run() -> None:
        attacked = attacks.healer_attack_contexts(toxic, seed)
        spec = h.model or cfg.model
        evaluator = build_detector(
            cfg.evaluate.evaluator,
            DetectorOptions(device=cfg.device, threshold=cfg.evaluate.threshold),
        )

        def heal(detector, retries: int) -> tuple[list[float], list[bool]]:
            healer = ContextualHealer(
                base.engine(spec),
                detector,
                h.fixed_reply,
                spec,
                h.top_p,
                h.temperature,
                h.max_new_tokens,
                retries,
                seed,
            )
            res = healer.heal(attacked)
            scores = evaluator.score([s.with_response(r.reply) for s, r in zip(attacked, res)])
            return scores, [r.fallback for r in res]

        raw, _ = heal(None, 0)
        kept, fallback = heal(base.rescore_detector(), h.retries)
        base.release()
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
                    "toxic_after_rescore": sum(kept[i] >= evaluator.threshold for i in idx)
                    / len(idx),
                    "fallback": sum(fallback[i] for i in idx) / len(idx),
                }
            )
        write_json(out, {"rows": rows})

    if toxic:
        base.step("healer_attack", key, [out], run)
        return json.loads(out.read_text(encoding="utf-8"))["rows"]
    return []


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


__all__ = ["ExperimentConfig", "load_experiment", "run_experiment"]
