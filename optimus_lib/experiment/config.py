"""The robustness experiment's settings: methods x detector recall x seeds on the same data.

The paper's robustness table at small scale. ``pipelines/experiment.py`` runs it as a
KFP pipeline (``optimus experiment CONFIG.yaml`` under kfp.local; on a cluster, the
compiled ``pipelines/experiment.yaml`` with :meth:`ExperimentConfig.pipeline_arguments`
as its parameters): per seed, one prepare_data, one classify (weakened to the highest recall any
arm uses) and one heal of everything it flags; per arm (seed, recall, method),
:func:`optimus_lib.stages.arms.arm_inputs` re-thresholds the stored scores at the
detector recall, reuses the seed's healed replies, then dpo_train and evaluate;
:func:`optimus_lib.experiment.compare.compare` gathers every arm's evaluation into one
table. no_defense ignores the detector, so it runs once per seed and its row is
repeated at every recall.

``attacks`` adds adaptive attacks as an axis: for each listed evasion
(``jailbreak:<variant>`` or ``perturb:<kind>``, ``optimus_lib.threats.evasion``) every seed
runs again on the same data where ``base.data.evasion_rate`` (default half) of the
injected toxic replies carry it. The pipeline does not change: an attacked copy is one
more seed, ``k * ATTACK_SEED_STRIDE + s`` for the k-th attack on seed ``s``, which
prepare_data resolves (:meth:`optimus_lib.stages.data.DataSettings.for_run_seed`) and the
comparison labels with its attack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from optimus_lib.config import RUN_NAME, PipelineSettings
from optimus_lib.errors import OptimusError
from optimus_lib.settings import Strict, load_yaml, one_line
from optimus_lib.stages.data import ATTACK_SEED_STRIDE, DataSettings
from optimus_lib.stages.evaluate import Gates
from optimus_lib.stages.train import METHODS


def _unique(values: list, what: str) -> list:
    twice = sorted({v for v in values if values.count(v) > 1}, key=values.index)
    if twice:
        raise ValueError(f"{what} listed twice: {twice}")
    return values


class Promotion(Strict):
    """Register one method's adapter only when it beats no_defense on the same data.

    Checked on the first seed at the first recall: ``gates`` relative to the control arm
    (no_defense) instead of the base model (``max_rtr_ratio``: toxic RTR / no_defense's;
    ``max_perplexity_increase`` and ``max_over_refusal_increase``: over no_defense's);
    with ``require_effect`` the 95 % paired interval of the toxic-RTR difference must lie
    below 0. The adapter then goes to ``base.registry``, as the defense pipeline's would.
    """

    method: str = "optimus"
    gates: Gates = Gates(
        max_rtr_ratio=0.5, max_perplexity_increase=0.1, max_over_refusal_increase=0.05
    )
    require_effect: bool = True

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v not in METHODS or v == "no_defense":
            raise ValueError(f"one of {', '.join(m for m in METHODS if m != 'no_defense')}")
        return v


class ComparisonSettings(Strict):
    """compare_arms' settings: the report title, the row order of the methods (empty: the
    library's order) and the optional promotion of one method."""

    name: str = "experiment"
    methods: list[str] = []
    promote: Promotion | None = None
    # the experiment's attacks, in order: seed k * ATTACK_SEED_STRIDE + s is attack k
    attacks: list[str] = []

    def attack_of(self, seed: int) -> tuple[str | None, int]:
        """``(attack, data seed)`` of a run seed; ``(None, seed)`` for clean data."""
        k, s = divmod(int(seed), ATTACK_SEED_STRIDE)
        if k == 0:
            return None, int(seed)
        return (self.attacks[k - 1] if k <= len(self.attacks) else f"attack {k}"), s


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
    seeds: list[Annotated[int, Field(ge=0, lt=ATTACK_SEED_STRIDE)]] = Field(
        default_factory=lambda: [0], min_length=1
    )
    # Methods run at one recall only (the paper's table runs every baseline at the
    # weakest recall and only filter and optimus at the others): recall -> methods,
    # each a subset of ``methods``; a recall not named runs all of ``methods``.
    methods_at: dict[float, list[str]] = {}
    promote: Promotion | None = None
    # Adaptive attacks as an axis: each evasion reruns every seed on its attacked data.
    attacks: list[str] = []

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

    @field_validator("attacks")
    @classmethod
    def _attacks(cls, v: list[str]) -> list[str]:
        DataSettings(attacks=v)  # the same check as a data setting
        from optimus_lib.threats.evasion import JAILBREAKS, PERTURBATIONS

        for a in v:
            kind, _, name = a.partition(":")
            known = JAILBREAKS if kind == "jailbreak" else PERTURBATIONS
            if a == "perturb:paraphrase":
                raise ValueError("'perturb:paraphrase' needs a paraphrasing model; not an axis")
            if name not in known:
                raise ValueError(f"{a!r}: unknown {kind} (known: {', '.join(sorted(known))})")
        return _unique(v, "attacks")

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        b = self.base
        for f, why in (("seed", "seeds"), ("method", "methods")):
            if f in b.model_fields_set:
                raise ValueError(f"base.{f}: set by the experiment's '{why}'")
        if b.classify.target_recall is not None:
            raise ValueError("base.classify.target_recall: set by the experiment's 'recalls'")
        if self.attacks and (b.data.evasion is not None or b.data.attacks):
            raise ValueError(
                "base.data.evasion: with 'attacks' the clean seeds stay clean (the attacked "
                "ones get each evasion at base.data.evasion_rate)"
            )
        if self.attacks and b.data.train_uri:
            raise ValueError("attacks: need the bundled data (base.data.train_uri is set)")
        if b.classify.reuse_scores:
            raise ValueError("base.classify.reuse_scores: the experiment scans once, then reuses")
        for recall, names in self.methods_at.items():
            if recall not in self.recalls:
                raise ValueError(f"methods_at: recall {recall} is not in recalls")
            extra = [m for m in names if m not in self.methods]
            if extra or not names:
                raise ValueError(f"methods_at[{recall}]: {extra or 'empty'}; name some of methods")
        p = self.promote
        if p is not None and not {"no_defense", p.method} <= set(self.methods):
            raise ValueError(f"promote: needs methods no_defense and {p.method} (the control)")
        if b.heal.mode != "contextual":
            raise ValueError(
                "base.heal.mode: keep 'contextual'; fixed-reply healing is the 'fixed_heal' method"
            )
        return self

    # ---- what the experiment pipeline receives -----------------------------------------
    def run_seeds(self) -> list[int]:
        """The pipeline's seeds: the clean ones, then each attack's copies of them."""
        rounds = range(len(self.attacks) + 1)
        return [k * ATTACK_SEED_STRIDE + s for k in rounds for s in self.seeds]

    def arms(self) -> list[dict[str, Any]]:
        """One ``{"seed", "recall", "method"}`` per arm, in run order: seed by seed (the
        attacked copies after the clean seeds), recalls as given, methods as given
        (``methods_at`` narrows a recall); no_defense once per seed (first recall)."""
        out = []
        for seed in self.run_seeds():
            for i, recall in enumerate(self.recalls):
                for method in self.methods_at.get(recall, self.methods):
                    if method != "no_defense" or i == 0:
                        out.append({"seed": seed, "recall": recall, "method": method})
        return out

    def comparison(self) -> ComparisonSettings:
        """What compare_arms needs: the title, the row order and the promotion."""
        return ComparisonSettings(
            name=self.name,
            methods=list(self.methods),
            promote=self.promote,
            attacks=list(self.attacks),
        )

    def pipeline_arguments(self) -> dict[str, Any]:
        """The experiment pipeline's parameters (``pipelines/experiment.py``): the stages'
        settings resolved from ``base``, and the values the two loops vary."""
        args = self.base.pipeline_arguments()
        if args.pop("train_backend") != "local":
            raise OptimusError(
                "resources.train_backend: trainjob is the defense pipeline's; the experiment "
                "trains each arm in its own task (resources.train_processes)"
            )
        args.pop("trainjob_settings")
        top = max(self.recalls)
        if top < 1.0:
            # classify once per seed at the highest recall any arm uses: heal then writes
            # only replies some arm trains on (lower recalls re-threshold a subset)
            args["classify_settings"] = {**args["classify_settings"], "target_recall": top}
        # methods are compared side by side against no_defense, not gated on their own
        args["evaluate_settings"] = {
            **args["evaluate_settings"],
            "compare_base": False,
            "gates": {},
        }
        # every promotion registers the next free version of the model
        args["register_settings"] = {**args["register_settings"], "version": ""}
        if self.attacks:
            args["data_settings"] = {**args["data_settings"], "attacks": list(self.attacks)}
        return {
            **args,
            "seeds": self.run_seeds(),
            "arms": self.arms(),
            "comparison_settings": self.comparison().model_dump(mode="json", exclude_none=True),
        }


def parse_experiment(raw: dict[str, Any], source: str = "experiment") -> ExperimentConfig:
    """Validate an experiment mapping; every problem is a one-line OptimusError."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise OptimusError(f"{source}: {one_line(exc)}") from None


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Load and validate an experiment YAML; every problem is a one-line OptimusError."""
    return parse_experiment(load_yaml(path), str(path))


__all__ = [
    "ComparisonSettings",
    "ExperimentConfig",
    "Promotion",
    "load_experiment",
    "parse_experiment",
]
