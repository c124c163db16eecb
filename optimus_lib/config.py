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
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from optimus_lib.errors import OptimusError
from optimus_lib.settings import (
    BUNDLED_MODEL,
    DetectorName,
    ModelSpec,
    Strict,
    load_yaml,
    one_line,
)
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
    accelerator_count: int = Field(1, ge=0)  # per inference task: classify, heal, evaluate
    # The training task's accelerators (e.g. all 8 of its node) and its processes there
    # (0: one per accelerator; dpo_train runs one rank each under torchrun).
    train_accelerator_count: int = Field(1, ge=0)
    train_processes: int = Field(0, ge=0)
    # ``trainjob``: the defense pipeline trains on Kubeflow Trainer (a TrainJob over
    # ``trainjob.num_nodes`` nodes) from a light task; ``trainjob`` holds TrainJobSettings
    # beyond what is filled in from here (accelerator, node selector, tolerations, PVC).
    train_backend: Literal["local", "trainjob"] = "local"
    trainjob: dict[str, Any] = {}
    node_selector: dict[str, str] = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    tolerations: list[dict[str, Any]] = [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    # The PVC the GPU tasks mount at /optimus-cache (model cache + checkpoints); the
    # manifests create it under this name (manifests/base/cache-pvc.yaml).
    pvc_name: str = Field("optimus-cache", pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    # Shards classify and heal each run in: one pod per shard on a cluster, one after
    # the other under the local runner; the merged outputs equal an unsharded run's.
    shards: int = Field(1, ge=1, le=1024)

    def trainjob_settings(self) -> dict[str, Any]:
        """TrainJobSettings of the trainjob backend: the GPU pool's placement from here
        (``train_accelerator_count`` per node), ``trainjob`` on top; validated now."""
        from optimus_lib.settings import load_settings
        from optimus_lib.stages.trainjob import TrainJobSettings

        base = {
            "accelerator_type": self.accelerator_type,
            "accelerators_per_node": self.train_accelerator_count,
            "node_selector": self.node_selector,
            "tolerations": self.tolerations,
            "pvc": self.pvc_name,
        }
        shared = sorted({"pvc", "mount_path"} & set(self.trainjob))
        if shared:
            from optimus_lib.errors import OptimusError

            raise OptimusError(
                f"resources.trainjob: {', '.join(shared)} must not be set: the nodes and the "
                "controller task share resources.pvc_name at /optimus-cache"
            )
        job = load_settings(TrainJobSettings, {**base, **self.trainjob})
        return job.model_dump(exclude_defaults=True)

    def pipeline_arguments(self) -> dict[str, Any]:
        """The pipelines' placement parameters (the defense pipeline's; the experiment
        pipeline takes all but the training backend's)."""
        return {
            "accelerator_type": self.accelerator_type,
            "accelerator_count": self.accelerator_count,
            "train_accelerator_count": self.train_accelerator_count,
            "train_processes": self.train_processes,
            "train_backend": self.train_backend,
            "trainjob_settings": self.trainjob_settings(),
            "gpu_node_selector": self.node_selector,
            "gpu_tolerations": self.tolerations,
            "cache_pvc": self.pvc_name,
            "shards": self.shards,
        }


class PipelineSettings(Strict):
    """A whole defense pipeline run."""

    name: str = "run"
    model: ModelSpec = BUNDLED_MODEL  # the chat model fine-tuned and evaluated
    judge_model: ModelSpec = BUNDLED_MODEL  # the aligned model: llm-judge and healer
    seed: int = Field(0, ge=0)
    detector: DetectorName = "auto"  # llm-judge when judge_model is not the bundled one
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
            # replies, which the experiment pipeline gives them
            raise ValueError(
                f"method: {self.method!r} runs in `optimus experiment`; the defense pipeline "
                "takes optimus, no_dpo, fixed_heal or filter"
            )
        for section in SHARED:  # a value that is wrong only once resolved names its section
            self.stage(section)
        self._check_batch_splits()
        from optimus_lib.detect.base import check_evaluator_independent

        ev = self.evaluate
        try:
            check_evaluator_independent(
                [e for e in (ev.evaluator, ev.context_evaluator) if e],
                [self.detector, self.stage("heal").rescore_detector],
                self.judge_model,
            )
        except OptimusError as exc:
            raise ValueError(f"evaluate: {exc}") from None
        return self

    def _check_batch_splits(self) -> None:
        """The global batch must split over the training ranks: checked here, before
        classify and heal have run, not when training starts. The ranks: the TrainJob's
        nodes x accelerators, else ``train_processes`` (0: the training task's
        accelerators)."""
        from optimus_lib.stages.train import USES_DPO
        from optimus_lib.train.trainers import split_batch

        r = self.resources
        if r.train_backend == "trainjob":
            job = r.trainjob_settings()
            world = int(job.get("num_nodes", 1)) * max(1, int(r.train_accelerator_count))
        else:
            world = r.train_processes or max(1, r.train_accelerator_count)
        if world <= 1:
            return
        stages = [("sft", self.train.sft)]
        if self.method in USES_DPO:
            stages.append(("dpo", self.train.dpo))
        try:
            for stage, cfg in stages:
                split_batch(cfg.batch_size, cfg.grad_accum, world, stage)
        except OptimusError as exc:
            raise ValueError(f"{exc} (resources: {world} training ranks)") from None

    def stage(self, section: str) -> Any:
        """A section's settings with the shared top-level values filled in: the one place
        they are resolved. ``judge_model`` is classify's and heal's model, ``model`` the
        others'; heal re-scores with ``detector`` unless ``heal.rescore_detector`` is set."""
        sec = getattr(self, section)
        shared = {"seed": self.seed, "detector": self.detector, "method": self.method}
        shared["model"] = self.judge_model if section in ("classify", "heal") else self.model
        fill = {f: shared[f] for f in SHARED.get(section, ())}
        if section == "heal" and "rescore_detector" not in sec.model_fields_set:
            fill["rescore_detector"] = self.detector
        try:
            return type(sec).model_validate({**sec.model_dump(), **fill})
        except ValidationError as exc:
            raise ValueError(one_line(exc, prefix=section)) from None

    def stage_arguments(self) -> dict[str, dict[str, Any]]:
        """``{"<section>_settings": resolved settings as a JSON dict}`` for every stage."""
        out = {f"{s}_settings": _as_parameter(self.stage(s)) for s in SHARED}
        out["register_settings"] = _as_parameter(self.registry)
        return out

    def pipeline_arguments(self) -> dict[str, Any]:
        """The defense pipeline's parameters (``pipelines/defense.py``): every stage's
        resolved settings, plus where the tasks run."""
        return {**self.stage_arguments(), **self.resources.pipeline_arguments()}


def _as_parameter(settings: Any) -> dict[str, Any]:
    """Settings as a KFP dict parameter: JSON types, unset optional values left out (KFP
    structs cannot hold them locally; each one's default is None anyway)."""
    return settings.model_dump(mode="json", exclude_none=True)


def load_pipeline_settings(path: str | Path) -> PipelineSettings:
    """Load and validate a YAML settings file; every problem is a one-line OptimusError."""
    raw = load_yaml(path)
    try:
        return PipelineSettings.model_validate(raw)
    except ValidationError as exc:
        raise OptimusError(f"{path}: {one_line(exc)}") from None
