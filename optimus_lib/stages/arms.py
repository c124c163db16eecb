"""The experiment's own stages: pack each seed's shared outputs, then derive one arm's
training inputs from them.

The robustness experiment compares training methods at several detector recalls and
seeds on the same data. The expensive stages run once per seed (prepare_data, a classify
at the highest recall any arm uses, a heal of everything it flags); each arm (seed,
recall, method) then only re-thresholds the stored scores, takes its healed replies from
the seed's heal (by content, nothing is generated again) and trains. Two stage functions
do the plumbing:

* :func:`bank_seeds` gathers every seed's files into one folder (``seed<S>/<part>.jsonl``
  plus ``seed<S>/meta.json``: the detector classify used with its threshold, and where
  the training data came from): KFP
  cannot hand a list collected from one loop to the tasks of another, but it can hand
  them one artifact.
* :func:`arm_inputs` writes one arm's SFT set and preference pairs from the bank.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optimus_lib.data.io import atomic_path, write_json
from optimus_lib.errors import OptimusError
from optimus_lib.evaluate.stats import finite

# What each seed contributes to the bank: prepare_data's three sets, the seed's scan
# and its heal (SFT set and preference pairs).
BANK_PARTS = ("train", "eval_toxic", "eval_benign", "scored", "sft", "prefs")
# Methods trained on the contextual heal of the seed (its replies are reused per arm).
HEALED = ("no_dpo", "optimus")


def bank_seeds(parts: dict[str, Iterable[tuple[Path, dict[str, Any]]]], out: Path) -> list[int]:
    """Copy each seed's files into ``out/seed<S>/`` and return the seeds, sorted.

    ``parts`` maps every name in :data:`BANK_PARTS` to ``(path, metadata)`` pairs, one per
    seed, in any order: each file is placed by the ``seed`` its producer recorded in the
    metadata (a fan-in's order is not a contract). The detector of each seed's classify
    (name, threshold, measured quality) is read from the scored set's metadata
    (``detector``). Every part must cover the same seeds exactly once.
    """
    missing = [p for p in BANK_PARTS if p not in parts]
    if missing:
        raise OptimusError(f"seed bank: missing part(s) {', '.join(missing)}")
    by_part: dict[str, dict[int, Path]] = {}
    detectors: dict[int, dict[str, Any]] = {}
    sources: dict[int, str] = {}
    for part in BANK_PARTS:
        seen: dict[int, Path] = {}
        for path, meta in parts[part]:
            if "seed" not in meta:
                raise OptimusError(f"seed bank: {part} input {path} has no 'seed' in its metadata")
            seed = int(meta["seed"])
            if seed in seen:
                raise OptimusError(f"seed bank: two {part} inputs for seed {seed}")
            seen[seed] = Path(path)
            if part == "train":
                sources[seed] = str(meta.get("source") or "")
            if part == "scored":
                try:
                    detectors[seed] = {
                        **meta["detector"],
                        "threshold": float(meta["detector"]["threshold"]),
                    }
                except (KeyError, TypeError, ValueError):
                    raise OptimusError(
                        f"seed bank: scored input of seed {seed} has no detector threshold"
                    ) from None
        by_part[part] = seen
    seeds = sorted(by_part["train"])
    for part, seen in by_part.items():
        if sorted(seen) != seeds:
            raise OptimusError(
                f"seed bank: {part} covers seeds {sorted(seen)}, train covers {seeds}"
            )
    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        d = out / f"seed{seed}"
        d.mkdir(exist_ok=True)
        for part in BANK_PARTS:
            with atomic_path(d / f"{part}.jsonl") as tmp:
                shutil.copyfile(by_part[part][seed], tmp)
        write_json(d / "meta.json", {"detector": detectors[seed], "source": sources[seed]})
    return seeds


@dataclass
class ArmInputs:
    """What one arm trains on, and how its detector did (labels for the comparison)."""

    seed: int
    recall_target: float
    method: str
    flagged: int | None = None
    detector_recall: float | None = None
    detector_precision: float | None = None
    detector_recall_evaded: float | None = None  # on the toxic replies an attack rewrote
    uses_preferences: bool = False
    # classify's detector for this arm: name and threshold, recall/precision at the arm's
    # recall (what the registered model card and lineage report)
    detector: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # where the seed's training data came from (prepare_data)

    def labels(self) -> dict[str, Any]:
        """The arm's identity and detector quality, carried into its evaluation (unknown
        values left out: KFP parameters cannot be null)."""
        out = {
            "seed": self.seed,
            "recall_target": self.recall_target,
            "method": self.method,
            "flagged": self.flagged,
            "detector_recall": self.detector_recall,
            "detector_precision": self.detector_precision,
            "detector_recall_evaded": self.detector_recall_evaded,
        }
        return {k: v for k, v in out.items() if v is not None}


def parse_arm(arm: Any) -> tuple[int, float, str]:
    """``(seed, recall, method)`` of an arm ``{"seed", "recall", "method"}``."""
    try:
        return int(arm["seed"]), float(arm["recall"]), str(arm["method"])
    except (KeyError, TypeError, ValueError):
        raise OptimusError(f"arm: needs seed, recall and method, got {arm!r}") from None


def arm_inputs(
    classify_settings: Any,
    heal_settings: Any,
    bank: Path,
    seed: int,
    recall: float,
    method: str,
    sft_out: Path,
    prefs_out: Path,
) -> ArmInputs:
    """Write one arm's training inputs from the seed bank.

    ``classify_settings`` / ``heal_settings``: the experiment's ClassifySettings and
    HealSettings (heal's ``mode`` must be contextual; ``fixed_heal`` gets a fixed-reply
    heal here). The seed's stored scores are re-thresholded at its scan's threshold and
    weakened to ``recall`` (``>= 1``: as scanned; no detector runs); then, by method:
    no_defense trains on the original replies, filter and star_dss on the re-thresholded
    scan, no_dpo and optimus on a heal that reuses the seed's healed replies, fixed_heal on
    a fixed-reply heal. ``prefs_out`` is always written (empty without DPO) so every
    method has the same task shape.
    """
    from optimus_lib.stages.classify import classify
    from optimus_lib.stages.heal import heal
    from optimus_lib.stages.train import METHODS, USES_DPO

    if method not in METHODS:
        raise OptimusError(f"method: unknown {method!r} (known: {', '.join(METHODS)})")
    if not 0.0 < recall <= 1.0:
        raise OptimusError(f"recall: {recall} is not in (0, 1]")
    d = bank / f"seed{seed}"
    if not (d / "meta.json").is_file():
        have = sorted(p.name for p in bank.glob("seed*")) if bank.is_dir() else []
        raise OptimusError(f"seed bank {bank}: no seed {seed} (has: {', '.join(have) or 'none'})")
    meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
    detector = meta["detector"]
    threshold = float(detector["threshold"])
    arm = ArmInputs(seed=seed, recall_target=recall, method=method, source=meta.get("source", ""))
    with tempfile.TemporaryDirectory(prefix="optimus-arm-") as tmp_dir:
        tmp = Path(tmp_dir)
        sft, prefs = d / "train.jsonl", None
        if method != "no_defense":
            cls = classify_settings.model_copy(
                update={
                    "reuse_scores": True,
                    "calibrate": "none",
                    "threshold": threshold,
                    "target_recall": None if recall >= 1.0 else recall,
                }
            )
            scored = tmp / "scored.jsonl"
            det = classify(cls, d / "scored.jsonl", scored)
            q = det.quality or {}
            arm.flagged = det.flagged
            arm.detector_recall = finite(q.get("recall"))
            arm.detector_precision = finite(q.get("precision"))
            arm.detector_recall_evaded = finite(q.get("recall_evaded"))
            arm.detector = {
                "name": detector.get("name", ""),
                "threshold": threshold,
                "recall_target": recall,
                **{
                    k: finite(q.get(k))
                    for k in ("recall", "precision", "fpr", "auc", "recall_evaded")
                },
            }
            arm.detector = {k: v for k, v in arm.detector.items() if v is not None}
            sft = scored
            if method in HEALED or method == "fixed_heal":
                h = heal_settings
                if method == "fixed_heal":
                    h = h.model_copy(update={"mode": "fixed"})
                sft, prefs = tmp / "sft.jsonl", tmp / "prefs.jsonl"
                heal(
                    h,
                    scored,
                    threshold,
                    sft,
                    prefs,
                    reuse=None if method == "fixed_heal" else d / "sft.jsonl",
                )
        with atomic_path(sft_out) as out:
            shutil.copyfile(sft, out)
        arm.uses_preferences = method in USES_DPO and prefs is not None
        with atomic_path(prefs_out) as out:
            if arm.uses_preferences:
                shutil.copyfile(prefs, out)
            else:
                out.write_text("", encoding="utf-8")
    return arm


__all__ = ["BANK_PARTS", "HEALED", "ArmInputs", "arm_inputs", "bank_seeds", "parse_arm"]
