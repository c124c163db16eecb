"""Pipeline settings: one YAML file describing a whole defense run, used at the edges.

``optimus run SETTINGS.yaml`` and ``make submit`` read it; it maps onto the defense
pipeline's parameters (:meth:`PipelineSettings.pipeline_arguments`). Each section is the
owning stage's own settings model, so a typo anywhere is an error naming the field.
Values that two stages need are set once at the top level and given to both: ``model``
(fine-tuned and evaluated), ``judge_model`` (classify's LLM judge and heal's generator),
``seed``, ``detector`` (classify's detector and, unless
``heal.rescore_detector`` names another, heal's re-scoring detector: it must differ when
classify reads labels, e.g. the oracle). Setting a shared value inside a section is an
error, not a silent conflict.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from optimus_lib.errors import OptimusError
from optimus_lib.settings import BUNDLED_MODEL, Strict, load_yaml, one_line
from optimus_lib.stages.classify import ClassifySettings
from optimus_lib.stages.data import DataSettings
from optimus_lib.stages.evaluate import EvaluateSettings
from optimus_lib.stages.heal import HealSettings
from optimus_lib.stages.register import RegisterSettings
from optimus_lib.stages.train import Method, TrainSettings

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# section -> fields that are set at the top level and given to that stage
SHARED = {
    "data": ("seed",),
    "classify": ("detector", "model"),
    "heal": ("seed", "model"),
    "train": ("model", "seed", "method"),
    "evaluate": ("model", "seed"),
}


class Resources(Strict):
    """Kubernetes placement of the GPU stages (ignored by the local runner)."""

    accelerator_type: str = "nvidia.com/gpu"
    accelerator_count: int = Field(1, ge=0)
    node_selector: dict[str, str] = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    tolerations: list[dict[str, Any]] = [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    # The PVC the GPU tasks mount at /optimus-cache (model cache + checkpoints); the
    # manifests create it under this name (manifests/base/cache-pvc.yaml).
    pvc_name: str = Field("optimus-cache", pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class PipelineSettings(Strict):
    """A whole defense pipeline run."""

    name: str = "run"
    model: str = BUNDLED_MODEL  # the chat model fine-tuned and evaluated
    judge_model: str = BUNDLED_MODEL  # the aligned model: llm-judge and healer
    seed: int = 0
    detector: str = "auto"  # llm-judge when judge_model is not the bundled one, else stack
    method: Method = "optimus"
    data: DataSettings = DataSettings()
    classify: ClassifySettings = ClassifySettings()
    heal: HealSettings = HealSettings()
    train: TrainSettings = TrainSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    registry: RegisterSettings = RegisterSettings()
    resources: Resources = Resources()
    # Where a cluster run keeps its artifacts (`make submit`; a gs:// URI there). Not a
    # pipeline parameter, and `optimus run` ignores it (kfp.local writes into the run folder).
    pipeline_root: str = ""

    @model_validator(mode="after")
    def _check(self) -> PipelineSettings:
        if not RUN_NAME.match(self.name):
            raise ValueError("name: letters, digits, '.', '_', '-' only (it names a folder)")
        for section, fields in SHARED.items():
            clash = set(fields) & getattr(self, section).model_fields_set
            if clash:
                f = sorted(clash)[0]
                raise ValueError(
                    f"{section}.{f}: set '{f}' at the top level (it is given to every "
                    "stage that needs it)"
                )
        if self.method in ("no_defense", "star_dss"):
            # the defense pipeline trains on heal's output; these two need the original
            # replies, which the experiment runner gives them
            raise ValueError(
                f"method: {self.method!r} runs in `optimus experiment`; the defense pipeline "
                "takes optimus, no_dpo, fixed_heal or filter"
            )
        if "oracle" in self.stage("heal").rescore_detector:
            raise ValueError(
                "heal.rescore_detector: the oracle reads labels and healed replies have none; "
                "name a text detector here (e.g. wordlist)"
            )
        return self

    def stage(self, section: str) -> Any:
        """A section's settings with the shared top-level values filled in."""
        shared = {"seed": self.seed, "detector": self.detector, "method": self.method}
        shared["model"] = self.judge_model if section in ("classify", "heal") else self.model
        sec = getattr(self, section)
        fill = {f: shared[f] for f in SHARED.get(section, ())}
        if section == "heal" and "rescore_detector" not in sec.model_fields_set:
            fill["rescore_detector"] = self.detector
        return type(sec).model_validate({**sec.model_dump(), **fill})

    def pipeline_arguments(self) -> dict[str, Any]:
        """The defense pipeline's parameters (``pipelines/defense.py``)."""

        def only_set(section: str) -> dict[str, Any]:
            return getattr(self, section).model_dump(exclude_unset=True)

        r = self.resources
        return {
            "model": self.model,
            "judge_model": self.judge_model,
            "seed": self.seed,
            "detector": self.detector,
            "rescore_detector": self.stage("heal").rescore_detector,
            "method": self.method,
            "data_settings": only_set("data"),
            "classify_settings": only_set("classify"),
            "heal_settings": only_set("heal"),
            "train_settings": only_set("train"),
            "evaluate_settings": only_set("evaluate"),
            "registry": self.registry.uri,
            "model_name": self.registry.name,
            "model_version": self.registry.version,
            "accelerator_type": r.accelerator_type,
            "accelerator_count": r.accelerator_count,
            "gpu_node_selector": r.node_selector,
            "gpu_tolerations": r.tolerations,
            "cache_pvc": r.pvc_name,
        }


def load_pipeline_settings(path: str | Path) -> PipelineSettings:
    """Load and validate a YAML settings file; every problem is a one-line OptimusError."""
    raw = load_yaml(path)
    try:
        return PipelineSettings.model_validate(raw)
    except ValidationError as exc:
        raise OptimusError(f"{path}: {one_line(exc)}") from None
