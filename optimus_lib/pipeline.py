"""The whole defense as a sequence of cached, resumable stages over one run folder.

Layout of ``runs/<name>/``::

    config.yaml            the validated config that made the run
    stages.json            recorded key (hash of settings + inputs) of every finished stage
    data/train.jsonl       training dialogs (with ground truth when built in)
    data/eval_toxic.jsonl  held-out toxic contexts;  data/eval_benign.jsonl  benign ones
    scan.jsonl             every training record + toxicity + flagged
    heal.jsonl             every flagged record + healed reply + provenance
    train/sft-<data>/      LoRA adapters (data = all | filtered | fixed | healed)
    train/dpo-<data>/
    eval/<method>.json     metrics + generations per method
    metrics.json, report.html

A stage is skipped when its output exists and its key matches, so a killed run resumes
at the stage it was in (training itself resumes from its last checkpoint), and changing
one setting recomputes only the stages downstream of it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from optimus_lib.config import RunConfig
from optimus_lib.data.io import read_jsonl, read_samples, write_json, write_jsonl
from optimus_lib.data.schema import Sample, parse_record, sample_to_record
from optimus_lib.errors import OptimusError

console = Console(stderr=True)

# method -> (SFT data, DPO data or None)
METHOD_PLAN: dict[str, tuple[str, str | None]] = {
    "no_defense": ("all", None),
    "filter": ("filtered", None),
    "fixed_heal": ("fixed", "fixed"),
    "no_dpo": ("healed", None),
    "star_dss": ("star", None),
    "optimus": ("healed", "healed"),
}


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    h.update(path.read_bytes())
    return h.hexdigest()[:16]


def obj_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Run:
    """Stage bookkeeping for one run folder."""

    def __init__(self, cfg: RunConfig, run_dir: Path, progress: bool = True) -> None:
        self.cfg = cfg
        self.dir = run_dir
        self.progress = progress
        self.dir.mkdir(parents=True, exist_ok=True)
        self._keys_path = self.dir / "stages.json"
        self.keys: dict[str, str] = (
            json.loads(self._keys_path.read_text()) if self._keys_path.is_file() else {}
        )
        self.timings: dict[str, float] = {}
        self._engines: dict[str, Any] = {}
        self._detector = None
        self._rescore = None

    def cached(self, stage: str, key: str, *outputs: Path) -> bool:
        return self.keys.get(stage) == key and all(p.exists() for p in outputs)

    def done(self, stage: str, key: str) -> None:
        self.keys[stage] = key
        write_json(self._keys_path, self.keys)

    def step(self, stage: str, key: str, outputs: list[Path], fn: Callable[[], None]) -> bool:
        """Run ``fn`` unless the stage is cached; returns True when it ran."""
        if self.cached(stage, key, *outputs):
            console.print(f"[dim]- {stage}: up to date, skipped[/dim]")
            return False
        console.print(f"[bold]- {stage}[/bold]")
        t0 = time.time()
        fn()
        self.timings[stage] = round(time.time() - t0, 1)
        self.done(stage, key)
        return True

    # ---- shared resources ----------------------------------------------------------
    def engine(self, spec: str):
        if spec not in self._engines:
            from optimus_lib.models.engine import build_engine

            self._engines[spec] = build_engine(
                spec,
                self.cfg.engine,
                self.cfg.device,
                self.cfg.trust_remote_code,
                self.cfg.scan.batch_size,
                self.progress,
            )
        return self._engines[spec]

    def release(self) -> None:
        """Drop loaded models (judge, healer, detectors) before training needs the memory."""
        self._engines.clear()
        self._detector = None
        self._rescore = None

    def _build_detector(self, name: str):
        from optimus_lib.detect.base import DetectorOptions, build_detector

        sc = self.cfg.scan
        spec = sc.model or self.cfg.model
        opts = DetectorOptions(
            model=spec,
            device=self.cfg.device,
            engine=self.cfg.engine,
            batch_size=sc.batch_size,
            max_prompt_tokens=sc.max_prompt_tokens,
            paraphrases=sc.paraphrases,
            trust_remote_code=self.cfg.trust_remote_code,
            threshold=sc.threshold,
        )
        if "llm-judge" in name:
            opts.shared["engines"] = {spec: self.engine(spec)}
        return build_detector(name, opts)

    def detector(self):
        """The scan detector."""
        if self._detector is None:
            self._detector = self._build_detector(self.cfg.scan.detector)
        return self._detector

    def rescore_detector(self):
        """Re-scores healed replies and guards STAR-DSS prefixes: text without ground
        truth, so it is ``heal.rescore_detector`` when set, else the scan detector."""
        name = self.cfg.heal.rescore_detector
        if name is None or name == self.cfg.scan.detector:
            return self.detector()
        if self._rescore is None:
            self._rescore = self._build_detector(name)
            self._rescore.threshold = self.cfg.scan.threshold
        return self._rescore


# ---- stages ------------------------------------------------------------------------------
def stage_data(run: Run) -> dict[str, Path]:
    from optimus_lib.threats.poison import build_eval_sets, build_threat_set

    d = run.cfg.data
    names = ["train", "eval_toxic", "eval_benign"]
    if d.threat == "backdoor":
        names.append("eval_trigger")  # benign contexts with the trigger phrase
    paths = {k: run.dir / "data" / f"{k}.jsonl" for k in names}
    src = {k: v for k, v in d.model_dump().items()}
    for k in ("train", "eval_toxic", "eval_benign"):
        p = src.get(k)
        if p and p != "builtin":
            src[k + "_hash"] = file_hash(Path(p)) if Path(p).is_file() else p
    key = obj_hash({"data": src, "seed": run.cfg.seed})

    def build() -> None:
        if d.train == "builtin":
            train = build_threat_set(
                d.n_train,
                d.toxic_fraction,
                run.cfg.seed,
                d.max_context_turns,
                d.threat,
                d.trigger,
                d.threat_category,
                d.evasion,
                d.evasion_rate,
            )
        elif d.train.startswith("hf:"):
            from optimus_lib.data.sources import load_hf_dataset

            train = load_hf_dataset(d.train)
        else:
            train = read_samples(d.train)
        used = [re.match(r"chitchat-(\d+)-", s.id) for s in train]
        skip = 1 + max((int(m.group(1)) for m in used if m), default=-1)
        tox, ben = build_eval_sets(
            d.n_eval_toxic, d.n_eval_benign, run.cfg.seed, skip, d.max_context_turns
        )
        if d.eval_toxic:
            tox = read_samples(d.eval_toxic)[: d.n_eval_toxic]
        if d.eval_benign:
            ben = read_samples(d.eval_benign)[: d.n_eval_benign]
        sets = {"train": train, "eval_toxic": tox, "eval_benign": ben}
        if "eval_trigger" in paths:
            from optimus_lib.threats.attacks import add_trigger

            sets["eval_trigger"] = add_trigger(ben, d.trigger, "end", run.cfg.seed)
        for name, samples in sets.items():
            write_jsonl(paths[name], [_as_record(s) for s in samples])

    run.step("data", key, list(paths.values()), build)
    return paths


def _as_record(s: Sample) -> dict[str, Any]:
    return s.record if ("messages" in s.record or "context" in s.record) else sample_to_record(s)


def load(path: Path) -> list[Sample]:
    return [parse_record(r, i) for i, r in enumerate(read_jsonl(path))]


def stage_scan(run: Run, train_path: Path, base_scan: Path | None = None) -> Path:
    """Score and flag the training set.

    ``base_scan`` is an unweakened scan of the same training file by the same detector;
    when given, its scores are reused and only the (cheap) weakening is applied, so an
    experiment sweeping detector recall runs the detector once.
    """
    from optimus_lib.detect.ensemble import weaken_scores

    out = run.dir / "scan.jsonl"
    sc = run.cfg.scan
    key = obj_hash(
        {"scan": sc.model_dump(), "model": run.cfg.model, "train": file_hash(train_path)}
    )

    def scan() -> None:
        samples = load(train_path)
        if base_scan is not None:
            base = read_jsonl(base_scan)
            if len(base) != len(samples):
                raise OptimusError(f"{base_scan}: does not match {train_path}")
            scores = [float(r["toxicity"]) for r in base]
            if (base_scan.parent / "calibration.json").is_file():
                shutil.copyfile(base_scan.parent / "calibration.json", run.dir / "calibration.json")
            if sc.target_recall is not None:
                scores = weaken_scores(
                    scores,
                    [s.label for s in samples],
                    sc.target_recall,
                    scan_threshold(run),
                    [s.category for s in samples],
                    sc.weaken_category,
                )
        else:
            det = run.detector()
            scores = det.score(samples)
            threshold = sc.threshold
            if sc.calibrate != "none":
                from optimus_lib.detect.calibrate import calibrate_detector

                cal = calibrate_detector(
                    det, sc.calibrate, scores, sc.calibration_data, sc.target_fpr
                )
                threshold = cal.threshold
                write_json(
                    run.dir / "calibration.json",
                    {"threshold": cal.threshold, "method": cal.method, "details": cal.details},
                )
            if sc.target_recall is not None:
                scores = weaken_scores(
                    scores,
                    [s.label for s in samples],
                    sc.target_recall,
                    threshold,
                    [s.category for s in samples],
                    sc.weaken_category,
                )
        threshold = scan_threshold(run)
        recs = [
            {**s.record, "toxicity": float(x), "flagged": bool(x >= threshold)}
            for s, x in zip(samples, scores)
        ]
        write_jsonl(out, recs)

    run.step("scan", key, [out], scan)
    return out


def _content_key(s: Sample) -> str:
    return obj_hash([s.context, s.response])


def scan_threshold(run: Run) -> float:
    """The flag threshold in force: calibrated when the scan calibrated one."""
    cal = run.dir / "calibration.json"
    if run.cfg.scan.calibrate != "none" and cal.is_file():
        return float(json.loads(cal.read_text())["threshold"])
    return run.cfg.scan.threshold


def stage_heal(run: Run, scan_path: Path, cache: Path | None = None) -> Path:
    """Heal every flagged sample; replies already in ``cache`` (a heal.jsonl made with
    the same heal settings and model) are reused by content instead of regenerated."""
    from optimus_lib.heal.healer import ContextualHealer, HealResult

    out = run.dir / "heal.jsonl"
    h = run.cfg.heal
    key = obj_hash(
        {
            "heal": h.model_dump(),
            "scan": file_hash(scan_path),
            "model": run.cfg.model,
            "detector": run.cfg.scan.detector,
        }
    )

    def heal() -> None:
        recs = read_jsonl(scan_path)
        flagged = [parse_record(r, i) for i, r in enumerate(recs) if r["flagged"]]
        known: dict[str, HealResult] = {}
        if cache is not None and cache.is_file():
            for i, r in enumerate(read_jsonl(cache)):
                known[_content_key(parse_record(r, i))] = HealResult(r["healed"], **r["heal"])
        todo = [s for s in flagged if _content_key(s) not in known]
        spec = h.model or run.cfg.model
        if todo and run.cfg.heal.rescore_detector in (None, run.cfg.scan.detector):
            run.detector().threshold = scan_threshold(run)
        healer = ContextualHealer(
            run.engine(spec) if todo else None,
            run.rescore_detector() if todo else None,
            h.fixed_reply,
            spec,
            h.top_p,
            h.temperature,
            h.max_new_tokens,
            h.retries,
            run.cfg.seed,
        )
        if todo:
            for s, r in zip(todo, healer.heal(todo)):
                known[_content_key(s)] = r
        results = [known[_content_key(s)] for s in flagged]
        write_jsonl(
            out,
            [
                {
                    **s.record,
                    "healed": r.reply,
                    "heal": {
                        "generator": r.generator,
                        "prompt_version": r.prompt_version,
                        "attempts": r.attempts,
                        "score": r.score,
                        "fallback": r.fallback,
                    },
                }
                for s, r in zip(flagged, results)
            ],
        )

    run.step("heal", key, [out], heal)
    return out


def training_sets(
    run: Run, scan_path: Path, heal_path: Path | None, kind: str
) -> tuple[list[Sample], list[tuple[Sample, str]]]:
    """SFT samples and DPO (flagged sample, chosen reply) pairs for one data kind."""
    recs = read_jsonl(scan_path)
    samples = [parse_record(r, i) for i, r in enumerate(recs)]
    kept = [s for s, r in zip(samples, recs) if not r["flagged"]]
    flagged = [s for s, r in zip(samples, recs) if r["flagged"]]
    if kind == "all":
        return samples, []
    if kind == "filtered":
        return kept, []
    if kind == "fixed":
        reply = run.cfg.heal.fixed_reply
        return kept + [s.with_response(reply) for s in flagged], [(s, reply) for s in flagged]
    if heal_path is None:
        raise OptimusError("healed training data needs the heal stage")
    healed = [r["healed"] for r in read_jsonl(heal_path)]
    if len(healed) != len(flagged):
        raise OptimusError(f"{heal_path}: does not match {scan_path}; delete it and rerun")
    return kept + [s.with_response(h) for s, h in zip(flagged, healed)], list(zip(flagged, healed))


def stage_train(run: Run, scan_path: Path, heal_path: Path | None) -> dict[str, Path | None]:
    """Train every adapter the configured methods need; returns method -> adapter."""
    from optimus_lib.models.specs import load_tokenizer
    from optimus_lib.train.trainers import build_dpo_pairs, build_sft_records, train_dpo, train_sft

    cfg = run.cfg
    tok = load_tokenizer(cfg.model, cfg.trust_remote_code)
    adapters: dict[str, Path | None] = {}
    sft_done: dict[str, tuple[Path, str]] = {}
    for method in cfg.methods:
        sft_kind, dpo_kind = METHOD_PLAN[method]
        if sft_kind == "star":
            adapters[method] = _train_star_dss(run, scan_path, tok)
            continue
        if sft_kind not in sft_done:
            sft_samples, _ = training_sets(run, scan_path, heal_path, sft_kind)
            records = build_sft_records(sft_samples, tok, cfg.train.sft.max_length)
            out = run.dir / "train" / f"sft-{sft_kind}"
            key = obj_hash(
                {
                    "sft": cfg.train.sft.model_dump(),
                    "model": cfg.model,
                    "seed": cfg.seed,
                    "data": obj_hash(records),
                }
            )

            def _sft(records=records, out=out) -> None:
                train_sft(
                    cfg.model,
                    records,
                    out,
                    cfg.train.sft,
                    cfg.seed,
                    cfg.train.save_steps,
                    cfg.trust_remote_code,
                    run.progress,
                )

            run.step(f"train/sft-{sft_kind}", key, [out / "adapter"], _sft)
            sft_done[sft_kind] = (out / "adapter", key)
        sft_adapter, sft_key = sft_done[sft_kind]
        if dpo_kind is None:
            adapters[method] = sft_adapter
            continue
        _, pairs_src = training_sets(run, scan_path, heal_path, dpo_kind)
        pairs = build_dpo_pairs(
            [s for s, _ in pairs_src], [h for _, h in pairs_src], tok, cfg.train.dpo.max_length
        )
        out = run.dir / "train" / f"dpo-{dpo_kind}"
        if not pairs:
            console.print(f"[yellow]  no flagged samples: {method} skips DPO[/yellow]")
            adapters[method] = sft_adapter
            continue
        key = obj_hash(
            {
                "dpo": cfg.train.dpo.model_dump(),
                "sft": sft_key,
                "seed": cfg.seed,
                "data": obj_hash(pairs),
            }
        )

        def _dpo(pairs=pairs, out=out, sft_adapter=sft_adapter) -> None:
            train_dpo(
                cfg.model,
                sft_adapter,
                pairs,
                out,
                cfg.train.dpo,
                cfg.seed,
                cfg.train.save_steps,
                cfg.trust_remote_code,
                run.progress,
            )

        run.step(f"train/dpo-{dpo_kind}", key, [out / "adapter"], _dpo)
        adapters[method] = out / "adapter"
    return adapters


def _train_star_dss(run: Run, scan_path: Path, tok) -> Path:
    """STAR-DSS baseline: token-weighted CE/KL on the raw data, guard = the scan detector.

    The guard scores growing prefixes of every response. So that a weakened detector
    (``scan.target_recall``) handicaps STAR-DSS exactly as it handicaps Optimus, samples
    the scan left unflagged keep weight 1 on every token: the guard "missed" them.
    """
    from optimus_lib.train.star_dss import (
        completion_token_ids,
        compute_token_weights,
        train_star_dss,
    )
    from optimus_lib.train.trainers import build_sft_records

    cfg = run.cfg
    recs = read_jsonl(scan_path)
    samples = [parse_record(r, i) for i, r in enumerate(recs)]
    out = run.dir / "train" / "star-dss"
    key = obj_hash(
        {
            "sft": cfg.train.sft.model_dump(),
            "model": cfg.model,
            "seed": cfg.seed,
            "scan": cfg.scan.model_dump(),
            "guard": cfg.heal.rescore_detector,
            "flags": [r["flagged"] for r in recs],
            "data": obj_hash(build_sft_records(samples, tok)),
        }
    )

    def _star() -> None:
        wpath = out / "star_weights.json"
        if wpath.is_file() and json.loads(wpath.read_text()).get("key") == key:
            weights = json.loads(wpath.read_text())["weights"]
        else:
            weights = [[1.0] * len(ids) for ids in completion_token_ids(samples, tok)]
            flagged = [i for i, r in enumerate(recs) if r["flagged"]]
            if flagged:
                guard = compute_token_weights(
                    [samples[i] for i in flagged], tok, run.rescore_detector()
                )
                for i, w in zip(flagged, guard):
                    weights[i] = w
            out.mkdir(parents=True, exist_ok=True)
            write_json(wpath, {"key": key, "weights": weights})
        train_star_dss(
            cfg.model,
            samples,
            weights,
            out,
            cfg.train.sft,
            cfg.seed,
            cfg.train.save_steps,
            cfg.trust_remote_code,
            run.progress,
        )

    run.step("train/star-dss", key, [out / "adapter"], _star)
    return out / "adapter"


def _adapter_hash(adapter: Path | None) -> str:
    if adapter is None:
        return "base"
    return obj_hash(sorted((p.name, file_hash(p)) for p in adapter.glob("*.safetensors")))


def stage_merge(run: Run, adapters: dict[str, Path | None]) -> None:
    """With ``train.merge``: a standalone safetensors model per method (base + adapter
    merged), for serving stacks that do not load PEFT adapters."""
    from optimus_lib.models.specs import load_tokenizer
    from optimus_lib.train.trainers import load_trained

    cfg = run.cfg
    for method, adapter in adapters.items():
        if adapter is None:
            continue
        out = run.dir / "merged" / method

        def _merge(adapter=adapter, out=out) -> None:
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            model = load_trained(cfg.model, adapter, "cpu", cfg.trust_remote_code)
            model.save_pretrained(tmp, safe_serialization=True)
            load_tokenizer(cfg.model, cfg.trust_remote_code).save_pretrained(tmp)
            shutil.rmtree(out, ignore_errors=True)
            tmp.replace(out)

        key = obj_hash({"adapter": _adapter_hash(adapter), "model": cfg.model})
        run.step(f"merge/{method}", key, [out / "config.json"], _merge)


def stage_evaluate(
    run: Run,
    adapters: dict[str, Path | None],
    eval_toxic: Path,
    eval_benign: Path,
    eval_trigger: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate each method's model; with a backdoor, also RTR on triggered contexts."""
    from optimus_lib.detect.base import DetectorOptions, build_detector
    from optimus_lib.evaluate.runner import evaluate_model
    from optimus_lib.models.engine import TransformersEngine
    from optimus_lib.models.specs import load_tokenizer
    from optimus_lib.train.trainers import load_trained

    cfg = run.cfg
    ev = cfg.evaluate
    results: dict[str, dict[str, Any]] = {}
    toxic, benign = load(eval_toxic), load(eval_benign)
    triggered = load(eval_trigger) if eval_trigger else None
    evaluator = None
    for method, adapter in adapters.items():
        out = run.dir / "eval" / f"{method}.json"
        a_hash = _adapter_hash(adapter)
        key = obj_hash(
            {
                "eval": ev.model_dump(),
                "adapter": a_hash,
                "model": cfg.model,
                "toxic": file_hash(eval_toxic),
                "benign": file_hash(eval_benign),
                **({"trigger": file_hash(eval_trigger)} if eval_trigger else {}),
            }
        )

        def _eval(adapter=adapter, out=out) -> None:
            nonlocal evaluator
            if evaluator is None:
                evaluator = build_detector(
                    ev.evaluator,
                    DetectorOptions(
                        device=cfg.device,
                        threshold=ev.threshold,
                        trust_remote_code=cfg.trust_remote_code,
                    ),
                )
            tok = load_tokenizer(cfg.model, cfg.trust_remote_code)
            model = load_trained(cfg.model, adapter, cfg.device, cfg.trust_remote_code)
            engine = TransformersEngine(model, tok, batch_size=ev.batch_size, progress=run.progress)
            metrics, rows = evaluate_model(
                engine,
                toxic,
                benign,
                evaluator,
                ev.max_new_tokens,
                ev.similarity,
                triggered,
                sampling=ev,
            )
            write_json(out, {"metrics": metrics, "generations": rows})

        run.step(f"evaluate/{method}", key, [out], _eval)
        results[method] = json.loads(out.read_text())["metrics"]
    return results


def detector_quality(scan_path: Path, threshold: float, name: str) -> dict[str, Any] | None:
    from optimus_lib.detect.metrics import classification_metrics

    recs = read_jsonl(scan_path)
    samples = [parse_record(r, i) for i, r in enumerate(recs)]
    m = classification_metrics([s.label for s in samples], [r["toxicity"] for r in recs], threshold)
    return {"name": name, **m} if m else None


def run_pipeline(cfg: RunConfig, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Run every stage into ``run_dir``; returns the metrics written to metrics.json."""
    from optimus_lib.report.html import render_report

    run = Run(cfg, run_dir, progress)
    cfg_yaml = yaml.safe_dump(cfg.model_dump(), sort_keys=False)
    (run_dir / "config.yaml").write_text(cfg_yaml, encoding="utf-8")
    t0 = time.time()
    paths = stage_data(run)
    scan_path = stage_scan(run, paths["train"])
    needs_heal = any(METHOD_PLAN[m][0] == "healed" for m in cfg.methods)
    heal_path = None
    if needs_heal:
        if cfg.heal.mode == "fixed":
            raise OptimusError(
                "heal.mode 'fixed' is the 'fixed_heal' method; keep heal.mode "
                "'contextual' for 'optimus' and 'no_dpo'"
            )
        heal_path = stage_heal(run, scan_path)
    run.release()
    adapters = stage_train(run, scan_path, heal_path)
    if cfg.train.merge:
        stage_merge(run, adapters)
    results = stage_evaluate(
        run, adapters, paths["eval_toxic"], paths["eval_benign"], paths.get("eval_trigger")
    )
    metrics: dict[str, Any] = {
        "name": cfg.name,
        "evaluator": cfg.evaluate.evaluator,
        "methods": results,
        "detector": detector_quality(scan_path, scan_threshold(run), cfg.scan.detector),
        "timings": {**run.timings, "total": round(time.time() - t0, 1)},
    }
    if heal_path is not None:
        heal_recs = read_jsonl(heal_path)
        metrics["healing"] = {
            "healed": len(heal_recs),
            "fallback": sum(r["heal"]["fallback"] for r in heal_recs),
            "mean_attempts": sum(r["heal"]["attempts"] for r in heal_recs) / max(1, len(heal_recs)),
        }
    write_json(run_dir / "metrics.json", metrics)
    examples = []
    for method in results:
        gens = json.loads((run_dir / "eval" / f"{method}.json").read_text())["generations"]
        examples += [{"method": method, **g} for g in gens if g["set"] == "toxic"][:3]
    from optimus_lib.data.io import atomic_path

    with atomic_path(run_dir / "report.html") as tmp:
        tmp.write_text(render_report(metrics, cfg_yaml, examples), encoding="utf-8")
    return metrics
