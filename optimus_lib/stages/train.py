"""Stage 3: SFT on kept + healed dialogs, then DPO with healed (chosen) over flagged
(rejected); and the baselines, each one ``method``.

| method      | SFT data (``sft_data``)                      | then                        |
|-------------|----------------------------------------------|-----------------------------|
| no_defense  | every record as it is                        |                             |
| filter      | records not ``flagged``                      |                             |
| no_dpo      | heal's SFT set (kept + healed)               |                             |
| fixed_heal  | heal's SFT set made with ``mode: fixed``      | DPO on its ``preferences``  |
| optimus     | heal's SFT set (kept + healed)               | DPO on ``preferences``      |
| star_dss    | classify's scored set (original replies)     | token-weighted CE/KL        |

Checkpoints live under ``checkpoint_root/<key>`` where the key hashes the input files,
the settings and the library version: a retried task resumes from its last checkpoint,
and a task whose inputs or settings changed starts fresh (never from stale state). On a
cluster ``checkpoint_root`` is a mounted PVC; locally a cache folder.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from optimus_lib import __version__
from optimus_lib.data.io import read_jsonl, read_samples
from optimus_lib.errors import OptimusError
from optimus_lib.progress import staged
from optimus_lib.settings import BUNDLED_MODEL, DetectorName, ModelSpec, Strict
from optimus_lib.stages import file_digest, obj_digest
from optimus_lib.train.config import DistributedConfig, DPOConfig, SFTConfig

METHODS = ("no_defense", "filter", "fixed_heal", "no_dpo", "star_dss", "optimus")
Method = Literal["no_defense", "filter", "fixed_heal", "no_dpo", "star_dss", "optimus"]
USES_DPO = ("optimus", "fixed_heal")


class TrainSettings(Strict):
    """Which method, on which base model, with which hyperparameters."""

    method: Method = "optimus"
    model: ModelSpec = BUNDLED_MODEL  # the chat model being fine-tuned
    seed: int = 0
    sft: SFTConfig = SFTConfig()
    dpo: DPOConfig = DPOConfig()
    save_steps: int = Field(25, ge=1)
    checkpoint_root: str | None = None  # default: $OPTIMUS_CACHE/checkpoints
    # STAR-DSS guard: scores growing prefixes of flagged replies (label-free detector).
    star_guard: DetectorName = "wordlist"
    star_threshold: float = Field(0.5, ge=0.0, le=1.0)
    trust_remote_code: bool = False
    progress: bool = False
    # Used when the stage runs on several processes (dpo_train's ``processes``, a TrainJob).
    distributed: DistributedConfig = DistributedConfig()


@dataclass
class TrainResult:
    adapter: Path
    method: str
    sft_samples: int
    dpo_pairs: int
    key: str
    metrics: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_metrics(self) -> dict[str, float]:
        return {
            "sft_samples": float(self.sft_samples),
            "dpo_pairs": float(self.dpo_pairs),
            **self.metrics,
        }


def _flags(path: Path, records: list[dict], method: str) -> list[bool]:
    for i, r in enumerate(records):
        if not isinstance(r.get("flagged"), bool):
            raise OptimusError(f"{path}:{i + 1}: method {method!r} needs a boolean 'flagged'")
    return [r["flagged"] for r in records]


def _preferences(path: Path) -> list[dict]:
    recs = read_jsonl(path)
    for i, p in enumerate(recs, start=1):
        ok = all(isinstance(p.get(k), list) and p[k] for k in ("prompt", "chosen", "rejected"))
        if not ok:
            raise OptimusError(f"{path}:{i}: needs 'prompt', 'chosen' and 'rejected' messages")
    return recs


def checkpoint_dir(settings: TrainSettings, key: str) -> Path:
    from optimus_lib.models.specs import cache_dir

    root = (
        Path(settings.checkpoint_root) if settings.checkpoint_root else cache_dir() / "checkpoints"
    )
    return root / key


def _log_metrics(stage_dir: Path, prefix: str) -> dict[str, float]:
    """Final loss, steps and throughput of one training stage, from its trainer log."""
    log = stage_dir / "train_log.json"
    if not log.is_file():
        return {}
    hist = json.loads(log.read_text())
    out: dict[str, float] = {}
    losses = [h["loss"] for h in hist if "loss" in h]
    if losses:
        out[f"{prefix}_loss_first"], out[f"{prefix}_loss_last"] = losses[0], losses[-1]
    summary = next((h for h in reversed(hist) if "train_runtime" in h), {})
    names = (
        ("train_loss", "train_loss"),  # mean over the run
        ("train_runtime", "seconds"),
        ("train_samples_per_second", "samples_per_s"),
    )
    for k, name in names:
        if k in summary:
            out[f"{prefix}_{name}"] = float(summary[k])
    if "step" in summary:
        out[f"{prefix}_steps"] = float(summary["step"])
    for k in ("rewards/accuracies", "rewards/margins"):
        vals = [h[k] for h in hist if k in h]
        if vals:
            out[f"{prefix}_{k.replace('/', '_')}_last"] = float(vals[-1])
    return out


def _publish(adapter: Path, adapter_out: Path, model: str, method: str) -> None:
    """Copy the finished adapter to ``adapter_out`` (temp folder + rename: never partial),
    named for use elsewhere (:func:`portable_adapter`).

    Under ``accelerate launch`` only the main process writes.
    """
    from optimus_lib.distributed import is_main_process

    if not is_main_process():
        return
    adapter_out = Path(adapter_out)
    adapter_out.parent.mkdir(parents=True, exist_ok=True)
    tmp = adapter_out.with_name(f".{adapter_out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(adapter, tmp)
    portable_adapter(tmp, model, method)
    if adapter_out.exists():
        shutil.rmtree(adapter_out)
    os.replace(tmp, adapter_out)


def portable_adapter(folder: Path, model: str, method: str) -> None:
    """Make an adapter folder loadable on another machine.

    PEFT records the base model as the path it was loaded from (here a cache folder on
    the trainer), in ``adapter_config.json`` and in the README's front matter, so nobody
    who pulls the adapter can load it with ``AutoPeftModelForCausalLM``. Both name the
    public model instead (its hub id and pinned revision); the local spec stays in the
    training metadata and the registry's lineage.
    """
    from optimus_lib.models.specs import public_model

    pub = public_model(model)
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["base_model_name_or_path"] = pub.id
    cfg["revision"] = pub.revision
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    pin = f"@{pub.revision}" if pub.revision else " (revision not pinned)"
    source = f"\nWeights: {pub.source}.\n" if pub.source else ""
    (folder / "README.md").write_text(
        f"""---
base_model: {pub.id}
library_name: peft
tags: [optimus, lora, {method}]
---
# Optimus {method} adapter

A LoRA adapter for `{pub.id}`{pin}, trained by Optimus (method `{method}`).
{source}
```python
from peft import AutoPeftModelForCausalLM

model = AutoPeftModelForCausalLM.from_pretrained("path/to/this/folder")
```
""",
        encoding="utf-8",
    )


@staged("train")
def train(
    settings: TrainSettings,
    sft_data: Path,
    adapter_out: Path,
    preferences: Path | None = None,
) -> TrainResult:
    """Train the method's adapter from ``sft_data`` (+ ``preferences``); write it to
    ``adapter_out`` (a PEFT folder: adapter_config.json + adapter_model.safetensors)."""
    from optimus_lib.distributed import world_size
    from optimus_lib.models.specs import load_tokenizer
    from optimus_lib.train.budget import drift_metrics, probe_records
    from optimus_lib.train.trainers import build_sft_records, fit_preferences, train_dpo, train_sft

    s = settings
    samples = read_samples(sft_data)  # file:line errors; each keeps its record
    recs = [x.record for x in samples]
    if s.method in ("no_defense", "star_dss") and any(r.get("healed") is True for r in recs):
        raise OptimusError(
            f"{sft_data}: method {s.method!r} trains on the original replies; give it the "
            "dataset or classify's scored set, not heal's output"
        )
    if s.method == "filter":
        samples = [x for x, f in zip(samples, _flags(sft_data, recs, s.method)) if not f]
    if not samples:
        raise OptimusError(f"{sft_data}: no dialogs to train on")
    if s.method in USES_DPO and preferences is None:
        raise OptimusError(f"method {s.method!r} needs the preferences from heal")
    inputs = [file_digest(sft_data), file_digest(preferences) if s.method in USES_DPO else None]
    key = checkpoint_key(s, inputs, world_size())
    root = checkpoint_dir(s, key)
    tok = load_tokenizer(s.model, s.trust_remote_code)
    from optimus_lib.models.specs import public_model

    pub = public_model(s.model)
    metadata = {
        "base_model": s.model,
        "base_model_id": pub.id,
        **({"base_model_revision": pub.revision} if pub.revision else {}),
        **({"base_model_source": pub.source} if pub.source else {}),
        **({"base_model_license": pub.license} if pub.license else {}),
        "method": s.method,
        "optimus_lib_version": __version__,
        "settings_digest": key,
        # content digests of what was trained on, for the registry's lineage
        "sft_data_sha256": inputs[0],
        **({"preferences_sha256": inputs[1]} if inputs[1] else {}),
    }
    if s.method == "star_dss":
        adapter = _train_star_dss(s, sft_data, recs, samples, root, tok)
        _publish(adapter, adapter_out, s.model, s.method)
        metrics = {**_log_metrics(adapter.parent, "star"), **batch_metrics(s, world_size())}
        return TrainResult(Path(adapter_out), s.method, len(samples), 0, key, metrics, metadata)
    records = build_sft_records(samples, tok, s.sft.max_length)
    run = _run(s, root)
    sft_adapter = root / "sft" / "adapter"
    if not sft_adapter.is_dir():  # else: finished earlier by a task with the same key
        train_sft(run.stage("sft"), records, s.sft)
    metrics = _log_metrics(root / "sft", "sft")
    adapter, n_pairs = sft_adapter, 0
    if s.method in USES_DPO:
        pairs = fit_preferences(_preferences(preferences), tok, s.dpo.max_length)
        n_pairs = len(pairs)
        if pairs:
            adapter = root / "dpo" / "adapter"
            if not adapter.is_dir():
                probe = build_sft_records(
                    probe_records(samples, s.dpo.probe_size), tok, s.dpo.max_length
                )
                train_dpo(run.stage("dpo"), sft_adapter, pairs, s.dpo, probe)
            metrics.update(_log_metrics(root / "dpo", "dpo"))
            metrics.update(drift_metrics(root / "dpo" / "probe.json"))
        else:
            metadata["note"] = "no preference pairs (nothing flagged): DPO skipped"
    _publish(adapter, adapter_out, s.model, s.method)
    metrics.update(batch_metrics(s, world_size()))
    return TrainResult(Path(adapter_out), s.method, len(records), n_pairs, key, metrics, metadata)


def checkpoint_key(s: TrainSettings, inputs: list[str | None], world: int = 1) -> str:
    """The content key of a training run's checkpoints: its inputs' digests, the settings
    that decide the result, the library version and, above one process, the number of
    processes and the strategy (their checkpoints hold per-rank state and, sharded, a
    different layout: a retry with the same world resumes, another world starts fresh).
    Timeouts and progress bars do not change the result and are left out."""
    keyed = s.model_dump(exclude={"progress", "checkpoint_root", "distributed"})
    extra = [world, s.distributed.strategy] if world > 1 else []
    return obj_digest([inputs, keyed, __version__, *extra])[:20]


def batch_metrics(s: TrainSettings, world: int) -> dict[str, float]:
    """How the global batch was laid out: processes, and per stage the per-device batch,
    the accumulation and their product with the processes (= batch_size x grad_accum)."""
    from optimus_lib.train.trainers import split_batch

    out = {"train_processes": float(world)}
    stages = [("sft", s.sft)] + ([("dpo", s.dpo)] if s.method in USES_DPO else [])
    for name, cfg in stages:
        per_device, accum = split_batch(cfg.batch_size, cfg.grad_accum, world, name)
        out[f"{name}_per_device_batch"] = float(per_device)
        out[f"{name}_grad_accum"] = float(accum)
        out[f"{name}_global_batch"] = float(per_device * accum * world)
    return out


def _run(s: TrainSettings, root: Path):
    """The stages' shared run settings, under the content-keyed checkpoint folder."""
    from optimus_lib.train.trainers import StageRun

    return StageRun(
        s.model, root, s.seed, s.save_steps, s.trust_remote_code, s.progress,
        s.distributed.strategy, s.distributed.process_group_timeout_s,
    )  # fmt: skip


def _train_star_dss(s: TrainSettings, path: Path, recs, samples, root: Path, tok) -> Path:
    """STAR-DSS baseline: the guard scores growing prefixes of every flagged reply.

    So that a weakened detector handicaps STAR-DSS exactly as it handicaps Optimus,
    samples classify left unflagged keep weight 1 on every token: the guard "missed"
    them.
    """
    from optimus_lib.detect.base import DetectorOptions, build_detector
    from optimus_lib.train.star_dss import (
        completion_token_ids,
        compute_token_weights,
        train_star_dss,
    )

    out = root / "star-dss"
    if (out / "adapter").is_dir():
        return out / "adapter"
    flags = _flags(path, recs, "star_dss")
    weights = [[1.0] * len(ids) for ids in completion_token_ids(samples, tok)]
    flagged = [i for i, f in enumerate(flags) if f]
    if flagged:
        guard = build_detector(s.star_guard, DetectorOptions(threshold=s.star_threshold))
        for i, w in zip(flagged, compute_token_weights([samples[i] for i in flagged], tok, guard)):
            weights[i] = w
    return train_star_dss(_run(s, root).stage("star-dss"), samples, weights, s.sft)


def merge_adapter(model: str, adapter: Path, out: Path, trust_remote_code: bool = False) -> Path:
    """A standalone safetensors model (base + adapter merged), for serving stacks that do
    not load PEFT adapters; written to a temp folder and renamed."""
    from optimus_lib.models.specs import load_tokenizer
    from optimus_lib.train.trainers import load_trained

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged = load_trained(model, adapter, "cpu", trust_remote_code)
    merged.save_pretrained(tmp, safe_serialization=True)
    load_tokenizer(model, trust_remote_code).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out


def train_processes(
    settings: TrainSettings,
    sft_data: Path,
    adapter_out: Path,
    preferences: Path | None = None,
    processes: int = 1,
) -> TrainResult:
    """:func:`train` on ``processes`` processes of this node (0: one per visible
    accelerator, 1 on a CPU-only machine): in this process for one, else one rank per
    process under torchrun (:mod:`optimus_lib.stages.launch`). Same recipe either way:
    the global batch is the settings' (``batch_size x grad_accum``)."""
    from optimus_lib.stages.launch import resolve_processes, run_processes

    n = resolve_processes(processes)
    if n == 1:
        return train(settings, sft_data, adapter_out, preferences)
    return run_processes(settings, sft_data, adapter_out, preferences, n)
