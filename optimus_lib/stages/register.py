"""Stage 5: an immutable, versioned model entry, only for a model that passed evaluate.

Layout of an entry (local folder backend; GCS and Kubeflow Model Registry backends
come with the registry issue)::

    <registry>/models/<name>/<version>/
        adapter/          the PEFT adapter (safetensors only)
        model_card.md     base model, method, detector quality, gates, metrics
        metrics.json      evaluate's metrics, base metrics and gate
        lineage.json      run id, input artifact URIs and digests, library version
        MANIFEST.json     written last: every file with its sha256

A version folder is created with an exclusive ``mkdir``: registering an existing version
fails and never overwrites. A version without ``MANIFEST.json`` is unfinished and is not
listed. Rejected runs are recorded under ``<registry>/rejected/<name>/<time>-<id>/``.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from optimus_lib import __version__
from optimus_lib.data.io import write_json
from optimus_lib.errors import OptimusError
from optimus_lib.settings import Strict
from optimus_lib.stages import file_digest

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MANIFEST = "MANIFEST.json"


class RegisterSettings(Strict):
    uri: str = "runs/registry"  # the registry: a local folder (or file:// URI)
    name: str = Field("optimus-chat", description="model name: letters, digits, . _ -")
    version: str = ""  # empty: the next free v<N>


@dataclass
class RegisterResult:
    uri: str
    version: str
    path: Path
    card: str


def _root(registry: str) -> Path:
    if registry.startswith("gs://"):
        raise OptimusError(
            f"{registry}: the GCS registry backend is not built yet; use a local folder"
        )
    if "://" in registry and not registry.startswith("file://"):
        raise OptimusError(f"{registry}: unsupported registry URI scheme (use a folder path)")
    return Path(registry.removeprefix("file://")).expanduser()


def _check_name(kind: str, value: str) -> str:
    if not NAME.match(value) or value in (".", ".."):
        raise OptimusError(f"{kind} {value!r}: use letters, digits, '.', '_' and '-' only")
    return value


def _claim_version(models: Path, version: str) -> tuple[str, Path]:
    """Create the version folder exclusively; auto versions take the next free v<N>."""
    models.mkdir(parents=True, exist_ok=True)
    if version:
        path = models / _check_name("version", version)
        try:
            path.mkdir()
        except FileExistsError:
            raise OptimusError(
                f"{path}: version {version!r} is already registered (versions are immutable)"
            ) from None
        return version, path
    taken = [int(p.name[1:]) for p in models.glob("v*") if p.name[1:].isdigit()]
    n = max(taken, default=0) + 1
    while True:  # a concurrent registration may take n first: try the next one
        try:
            (models / f"v{n}").mkdir()
            return f"v{n}", models / f"v{n}"
        except FileExistsError:
            n += 1


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


def model_card(name: str, version: str, ev: dict[str, Any], lineage: dict[str, Any]) -> str:
    """A Markdown model card (dataset text never lands here: only numbers and settings)."""
    m, base, gate = ev["metrics"], ev.get("base_metrics") or {}, ev["gate"]
    train = lineage.get("train", {})

    def f(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    rows = "\n".join(
        f"| {k} | {f(m[k])} | {f(base.get(k, ''))} |"
        for k in (
            "rtr_toxic",
            "rtr_benign",
            "perplexity",
            "over_refusal",
            "distinct_2",
            "similarity",
        )
        if k in m
    )
    gates = "\n".join(f"- {c}" for c in gate.get("checked", [])) or "- none checked"
    detector = lineage.get("detector", {})
    det = ", ".join(f"{k} {f(v)}" for k, v in detector.items()) or "not recorded"
    return f"""# {name} {version}

A LoRA adapter fine-tuned by Optimus on dialog data that was not fully trusted: toxic
replies were flagged, healed and used as DPO negatives (METHOD.md).

- **Base model**: {train.get("base_model", "?")}
- **Method**: {train.get("method", "?")}
- **Detector (classify)**: {det}
- **Evaluator**: {ev.get("evaluator", "?")}
- **optimus_lib**: {lineage.get("optimus_lib_version", __version__)}
- **Gate**: {"passed" if gate["passed"] else "failed"}

## Gates
{gates}

## Metrics (fine-tuned vs base model)
| metric | fine-tuned | base |
|---|---|---|
{rows}

## Intended use and limits
A research or staging chat model. RTR is measured by an automatic evaluator on a small
held-out set; it bounds, but does not prove, the model's behaviour on real traffic.
Review the evaluation report before promoting this version.
"""


def register(
    settings: RegisterSettings, adapter: Path, evaluation: Path, lineage: dict[str, Any]
) -> RegisterResult:
    """Copy the adapter, card, metrics and lineage into a new immutable version."""
    s = settings
    models = _root(s.uri) / "models" / _check_name("name", s.name)  # settings first
    adapter = Path(adapter)
    if not any(adapter.glob("*.safetensors")):
        raise OptimusError(f"{adapter}: no *.safetensors adapter weights to register")
    ev = _load_evaluation(evaluation)
    if not ev["gate"]["passed"]:
        raise OptimusError(f"{evaluation}: the model did not pass evaluate's gates")
    version, path = _claim_version(models, s.version)
    lineage = {
        **lineage,
        "optimus_lib_version": __version__,
        "adapter_digest": file_digest(adapter),
        "evaluation_digest": file_digest(evaluation),
        "registered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    card = model_card(s.name, version, ev, lineage)
    shutil.copytree(adapter, path / "adapter")
    (path / "model_card.md").write_text(card, encoding="utf-8")
    write_json(path / "metrics.json", {k: ev.get(k) for k in ("metrics", "base_metrics", "gate")})
    write_json(path / "lineage.json", lineage)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    write_json(path / MANIFEST, {str(p.relative_to(path)): file_digest(p) for p in files})
    return RegisterResult(path.resolve().as_uri(), version, path, card)


def record_rejection(settings: RegisterSettings, evaluation: Path, lineage: dict[str, Any]) -> Path:
    """Record a run that failed the gates (reasons, metrics, lineage) for reviewers."""
    ev = _load_evaluation(evaluation)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = (
        _root(settings.uri)
        / "rejected"
        / _check_name("name", settings.name)
        / f"{stamp}-{uuid.uuid4().hex[:8]}"
    )
    write_json(
        path / "rejection.json",
        {
            "gate": ev["gate"],
            "metrics": ev["metrics"],
            "base_metrics": ev.get("base_metrics"),
            "lineage": {**lineage, "evaluation_digest": file_digest(evaluation)},
        },
    )
    return path


def list_versions(registry: str, name: str) -> list[str]:
    """Finished versions of a model (those with a manifest), oldest first."""
    models = _root(registry) / "models" / _check_name("name", name)
    done = [p for p in models.glob("*") if (p / MANIFEST).is_file()]
    return [p.name for p in sorted(done, key=lambda p: (p / MANIFEST).stat().st_mtime)]
