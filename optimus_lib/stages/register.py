"""Stage 5: an immutable, versioned model entry, only for a model that passed evaluate.

The entry goes into a model registry (:mod:`optimus_lib.registry`) chosen by URI: a local
folder (plain path or ``file://``), ``gs://bucket/prefix``, or a Kubeflow Model Registry
(``kubeflow-registry[+http]://HOST[:PORT]?storage=<folder or gs://>``: it indexes the
version, the storage holds the layout below). Layout of an entry::

    <registry>/models/<name>/<version>/
        .claim            created first, create-only: of two registrations one wins
        adapter/          the PEFT adapter (safetensors only)
        model_card.md     base model, method, detector quality, gates, metrics
        metrics.json      evaluate's metrics, base metrics and gate
        lineage.json      run id, input artifact URIs and digests, library version
        MANIFEST.json     written last: every file with its sha256

Every object is written create-only: registering an existing version fails with one line
and never overwrites. A version without ``MANIFEST.json`` is unfinished and is not listed
(it stays burnt). A new version moves the ``latest`` alias (compare-and-swap). Rejected
runs are recorded under ``<registry>/rejected/<name>/<time>-<id>/rejection.json``. The
component, the ``optimus models`` CLI and the tests all call these functions.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator

from optimus_lib import __version__
from optimus_lib.errors import OptimusError
from optimus_lib.registry import Conflict, ModelRegistry, check_name, open_registry
from optimus_lib.settings import Strict
from optimus_lib.stages import file_digest


class RegisterSettings(Strict):
    uri: str = "runs/registry"  # a local folder, file://, gs://b/p or kubeflow-registry://
    name: str = Field("optimus-chat", description="model name: letters, digits, . _ -")
    version: str = ""  # empty: the next free v<N>

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        try:
            open_registry(v)  # parses the URI; no backend is contacted until first use
        except OptimusError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("name", "version")
    @classmethod
    def _names(cls, v: str, info) -> str:
        if v or info.field_name == "name":
            try:
                check_name(info.field_name, v)
            except OptimusError as exc:
                raise ValueError(str(exc).split(": ", 1)[-1]) from None
        return v


@dataclass
class RegisterResult:
    uri: str  # the version folder (file:// or gs://)
    version: str
    path: Path | None  # the version folder on a local registry; None otherwise
    card: str


@dataclass
class RejectionResult:
    uri: str  # the rejection's folder (file:// or gs://)
    path: Path | None  # that folder on a local registry; None otherwise
    record: dict[str, Any]  # what rejection.json holds


def _load_evaluation(path: Path) -> dict[str, Any]:
    try:
        ev = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OptimusError(f"{path}: no such evaluation file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OptimusError(f"{path}: not an evaluation JSON ({exc})") from None
    if not isinstance(ev, dict) or "metrics" not in ev or "gate" not in ev:
        raise OptimusError(f"{path}: evaluation JSON needs 'metrics' and 'gate'")
    return ev


def _hub_dataset(lineage: dict[str, Any] | str) -> str:
    """The hub dataset the training data came from (``hf:NAME[@REV][:SPLIT]``), or ''."""
    source = lineage if isinstance(lineage, str) else str(lineage.get("source") or "")
    return source[3:].split(":")[0].split("@")[0] if source.startswith("hf:") else ""


CARD_METRICS = ("rtr_toxic", "rtr_benign", "perplexity", "over_refusal", "distinct_2", "similarity")


def model_card(name: str, version: str, ev: dict[str, Any], lineage: dict[str, Any]) -> str:
    """A Markdown model card with Hugging Face front matter, so hub and registry UIs read
    it (dataset text never lands here: only numbers and settings).

    The reference column is what the gates compared with: the base model on the defense
    pipeline, no_defense on the same data when an experiment promoted the model (with the
    paired interval of the toxic-RTR difference that passed).
    """
    m, base, gate = ev["metrics"], ev.get("base_metrics") or {}, ev["gate"]
    reference = ev.get("base_name") or "base model"
    train = lineage.get("train", {})
    base_id = train.get("base_model_id") or train.get("base_model", "?")
    revision = train.get("base_model_revision")

    def f(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    rows = "\n".join(
        f"| {k} | {f(m[k])} | {f(base[k]) if k in base else 'n/a'} |"
        for k in CARD_METRICS
        if k in m
    )
    gates = "\n".join(f"- {c}" for c in gate.get("checked", [])) or "- none checked"
    detector = lineage.get("detector", {})
    method = train.get("method")
    det_name = detector.get("name")
    det = ", ".join(f"{k} {f(v)}" for k, v in detector.items() if k != "name")
    det = f"{det_name} ({det})" if det_name and det else det_name or det or "not recorded"
    front = {
        "base_model": base_id,
        "library_name": "peft",
        "pipeline_tag": "text-generation",
        "tags": [t for t in dict.fromkeys(["optimus", "lora", "dpo", "safety", method]) if t],
        **({"license": train["base_model_license"]} if train.get("base_model_license") else {}),
        **({"datasets": [_hub_dataset(lineage["source"])]} if _hub_dataset(lineage) else {}),
    }
    promotion = ev.get("promotion") or {}
    effect = (promotion.get("control") or {}).get("rtr_toxic_diff") or []
    paired = ""
    if len(effect) == 2 and None not in effect:
        paired = (
            f"\nPaired toxic-RTR difference to {reference} on the same contexts: 95 % "
            f"interval [{effect[0]:+.3f}, {effect[1]:+.3f}].\n"
        )
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---
# {name} {version}

A LoRA adapter fine-tuned by Optimus on dialog data that was not fully trusted: toxic
replies were flagged, healed in context and used as DPO negatives (docs/method.md in the
Optimus repository).

- **Base model**: {base_id}{f"@{revision}" if revision else " (revision not pinned)"}
- **Weights trained on**: {train.get("base_model_source") or base_id}
- **Method**: {train.get("method", "?")}
- **Detector (classify)**: {det}
- **Evaluator**: {ev.get("evaluator", "?")}
- **optimus_lib**: {lineage.get("optimus_lib_version", __version__)}
- **Gate**: {"passed" if gate["passed"] else "failed"}

## Load it
```python
from peft import AutoPeftModelForCausalLM

model = AutoPeftModelForCausalLM.from_pretrained("adapter")  # this version's adapter/ folder
```

## Gates
{gates}

## Metrics (fine-tuned vs {reference})
| metric | fine-tuned | {reference} |
|---|---|---|
{rows}
{paired}
## Intended use and limits
A research or staging chat model. RTR is measured by an automatic evaluator on a small
held-out set; it bounds, but does not prove, the model's behaviour on real traffic.
Review the evaluation report before promoting this version.
"""


def register(
    settings: RegisterSettings, adapter: Path, evaluation: Path, lineage: dict[str, Any]
) -> RegisterResult:
    """Register the adapter, card, metrics and lineage as a new immutable version."""
    s = settings
    reg = open_registry(s.uri)  # settings first: a bad URI or name fails before any reading
    check_name("name", s.name)
    if s.version:
        check_name("version", s.version)
    adapter = Path(adapter)
    if not adapter.is_dir() or not any(adapter.glob("*.safetensors")):
        raise OptimusError(f"{adapter}: no *.safetensors adapter weights to register")
    ev = _load_evaluation(evaluation)
    if not ev["gate"].get("passed"):
        raise OptimusError(f"{evaluation}: the model did not pass evaluate's gates")
    # the base model as the adapter names it (what PEFT loads), when the caller's lineage
    # has no training metadata (e.g. `optimus models register`)
    named = _adapter_base(adapter)
    train = {**named, **(lineage.get("train") or {})}
    lineage = {
        **lineage,
        **({"train": train} if train else {}),
        "optimus_lib_version": __version__,
        "adapter_digest": file_digest(adapter),
        "evaluation_digest": file_digest(evaluation),
        "registered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # set by the images (their build records them); empty where a run is not in one
        "image": os.environ.get("OPTIMUS_IMAGE", ""),
        "git_sha": os.environ.get("OPTIMUS_GIT_SHA", ""),
    }
    cards: dict[str, str] = {}

    def build(version: str) -> dict[str, Path | bytes]:
        cards[version] = model_card(s.name, version, ev, lineage)
        files: dict[str, Path | bytes] = {
            f"adapter/{p.relative_to(adapter).as_posix()}": p
            for p in sorted(adapter.rglob("*"))
            if p.is_file()
        }
        metrics = {k: ev.get(k) for k in ("metrics", "base_metrics", "gate")}
        files["model_card.md"] = cards[version].encode("utf-8")
        files["metrics.json"] = _json_bytes(metrics)
        files["lineage.json"] = _json_bytes(lineage)
        return files

    info = reg.register(s.name, s.version, build)
    _move_latest(reg, s.name, info.version)
    base = f"models/{s.name}/{info.version}"
    return RegisterResult(info.uri, info.version, reg.local_path(base), cards[info.version])


def _adapter_base(adapter: Path) -> dict[str, Any]:
    """``base_model_id`` / ``base_model_revision`` from an adapter's adapter_config.json."""
    try:
        cfg = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    out = {
        "base_model_id": cfg.get("base_model_name_or_path"),
        "base_model_revision": cfg.get("revision"),
    }
    return {k: v for k, v in out.items() if v}


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


def _move_latest(reg: ModelRegistry, name: str, version: str) -> None:
    """Point ``latest`` at ``version`` unless a newer registration already moved it past."""
    for _ in range(20):
        current, gen = reg.get_alias(name, "latest")
        order = [v.version for v in reg.versions(name)]
        if current in order and version in order and order.index(current) > order.index(version):
            return
        try:
            reg.set_alias(name, "latest", version, expected=gen)
            return
        except Conflict:
            continue  # another registration moved it: look again
    raise OptimusError(f"{name}: could not move the 'latest' alias (too many concurrent moves)")


def record_rejection(
    settings: RegisterSettings, evaluation: Path, lineage: dict[str, Any]
) -> RejectionResult:
    """Record a run that failed the gates (reasons, metrics, lineage) for reviewers."""
    reg = open_registry(settings.uri)
    check_name("name", settings.name)
    ev = _load_evaluation(evaluation)
    record = {
        "gate": ev["gate"],
        "metrics": ev["metrics"],
        "base_metrics": ev.get("base_metrics"),
        "lineage": {**lineage, "evaluation_digest": file_digest(evaluation)},
    }
    base = reg.record_rejection(settings.name, record)
    return RejectionResult(reg.uri_of(base), reg.local_path(base), record)


def list_versions(registry: str, name: str) -> list[str]:
    """Finished versions of a model (those with a manifest), oldest first."""
    return [v.version for v in open_registry(registry).versions(name)]
