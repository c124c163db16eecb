"""Pipeline settings: strict YAML with one-line errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from optimus_lib.config import PipelineSettings as RunConfig
from optimus_lib.config import load_pipeline_settings as load_config
from optimus_lib.errors import OptimusError

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_valid_yaml_loads(tmp_path):
    cfg = load_config(
        _cfg(
            tmp_path,
            "name: t\nseed: 3\nmethod: filter\ndetector: lexical\n"
            "data: {n_train: 40, toxic_fraction: 0.1}\n"
            "classify: {threshold: 0.7, target_recall: 0.25}\n"
            "train: {sft: {epochs: 2, lora: {r: 8}}, dpo: {beta: 0.1}}\n"
            "evaluate: {evaluator: wordlist}\n",
        )
    )
    assert cfg.name == "t" and cfg.seed == 3
    assert cfg.method == "filter"
    assert cfg.data.n_train == 40 and cfg.data.toxic_fraction == 0.1
    assert cfg.data.n_eval_toxic == RunConfig().data.n_eval_toxic  # defaults fill the rest
    assert cfg.detector == "lexical" and cfg.classify.target_recall == 0.25
    assert cfg.stage("classify").detector == "lexical"
    assert cfg.stage("heal").rescore_detector == "lexical"  # one value, given to both
    assert cfg.stage("train").seed == 3 and cfg.stage("data").seed == 3
    assert cfg.train.sft.epochs == 2 and cfg.train.sft.lora.r == 8
    assert cfg.train.dpo.beta == 0.1
    assert cfg.train.trust_remote_code is False
    # resolved once: every stage's settings carry the shared values, complete
    args = cfg.pipeline_arguments()
    assert args["classify_settings"]["detector"] == "lexical"
    assert args["heal_settings"]["rescore_detector"] == "lexical"
    assert args["train_settings"]["method"] == "filter"
    assert {args[f"{s}_settings"]["seed"] for s in ("data", "heal", "train", "evaluate")} == {3}
    assert args["train_settings"]["sft"]["epochs"] == 2.0
    assert args["train_settings"]["sft"]["lora"]["r"] == 8
    assert args["train_settings"]["dpo"]["beta"] == 0.1
    assert args["classify_settings"]["target_recall"] == 0.25
    assert "weaken_category" not in args["classify_settings"]  # unset optional values left out
    assert args["register_settings"] == {
        "uri": "runs/registry",
        "name": "optimus-chat",
        "version": "",
    }
    # each dict is exactly what the stage's own model accepts
    from optimus_lib.stages.train import TrainSettings

    assert TrainSettings.model_validate(args["train_settings"]) == cfg.stage("train")


def test_oracle_detector_needs_a_text_rescore_detector(tmp_path):
    cfg = load_config(_cfg(tmp_path, "detector: oracle\nheal: {rescore_detector: wordlist}\n"))
    assert cfg.stage("classify").detector == "oracle"
    assert cfg.stage("heal").rescore_detector == "wordlist"
    with pytest.raises(OptimusError, match="oracle reads labels"):
        load_config(_cfg(tmp_path, "detector: oracle+wordlist\n"))


def test_experiment_arguments_resolve_each_stage_and_vary_only_the_loops(tmp_path):
    from optimus_lib.experiment import load_experiment

    exp = load_experiment(
        _cfg(
            tmp_path,
            "name: e\nmethods: [no_defense, optimus]\nrecalls: [0.15, 0.5]\nseeds: [0, 1]\n"
            "base: {detector: oracle+wordlist, heal: {rescore_detector: wordlist}}\n",
        )
    )
    args = exp.pipeline_arguments()
    assert args["classify_settings"]["target_recall"] == 0.5  # the highest an arm uses
    assert args["evaluate_settings"]["compare_base"] is False
    assert args["seeds"] == [0, 1]
    assert {(a["seed"], a["method"]) for a in args["arms"]} == {
        (s, m) for s in (0, 1) for m in ("no_defense", "optimus")
    }
    assert len(args["arms"]) == 6  # no_defense once per seed, optimus at both recalls
    assert args["comparison_settings"]["name"] == "e"


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(_cfg(tmp_path, "")) == RunConfig()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("data: {toxic_fraction: 2}\n", "data.toxic_fraction"),
        ("data: {n_trian: 5}\n", "data.n_trian"),
        ("colour: red\n", "colour"),
        ("classify: {threshold: -0.1}\n", "classify.threshold"),
        ("method: magic\n", "method"),
        ("classify: {detector: lexical}\n", "classify.detector"),
        ("train: {model: x}\n", "train.model"),
        ("name: ../../etc\n", "name"),
        ("evaluate: {gates: {max_rtr_toxic: 2}}\n", "evaluate.gates.max_rtr_toxic"),
        ("heal: {mode: sometimes}\n", "heal.mode"),
        ("train: {sft: {lora: {r: 0}}}\n", "train.sft.lora.r"),
        ("model: evilorg/model\n", "model"),
        ("classify: {detector: lexcial}\n", "classify.detector"),
        ("detector: oracle\n", "heal.rescore_detector"),
        ("heal: {rescore_detector: oracle}\n", "heal.rescore_detector"),
        ("registry: {uri: 's3://b/x'}\n", "registry.uri"),
        ("registry: {name: 'a b'}\n", "registry.name"),
        ("data: {train_uri: 'gs://bucket-only'}\n", "data.train_uri"),
    ],
)
def test_bad_value_is_one_line_naming_field(tmp_path, text, field):
    with pytest.raises(OptimusError) as exc:
        load_config(_cfg(tmp_path, text))
    msg = str(exc.value)
    assert field in msg
    assert "\n" not in msg
    assert "c.yaml" in msg


def test_invalid_yaml_names_line(tmp_path):
    with pytest.raises(OptimusError) as exc:
        load_config(_cfg(tmp_path, "name: ok\nclassify: {detector: [\n"))
    assert "c.yaml:" in str(exc.value) and "invalid YAML" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(OptimusError, match="mapping"):
        load_config(_cfg(tmp_path, "- a\n- b\n"))
    with pytest.raises(OptimusError, match="no such settings"):
        load_config(tmp_path / "missing.yaml")


def test_quickstart_config_validates():
    from optimus_lib.experiment import load_experiment

    exp = load_experiment(ROOT / "examples" / "quickstart.yaml")  # what setup.sh runs
    assert exp.base.model == "smollm2-135m-instruct"
    assert exp.methods == ["no_defense", "optimus"] and exp.promote.method == "optimus"
    assert exp.recalls == [0.15]
    cfg = load_config(ROOT / "examples" / "defense.yaml")
    assert cfg.method == "optimus"


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_example_configs_validate(path):
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if "base" in raw:  # an experiment sweep: a base run config + methods/recalls/seeds
        from optimus_lib.experiment import load_experiment

        load_experiment(path)
    else:
        load_config(path)


@pytest.mark.parametrize(
    "yaml_text, culprit",
    [
        ("detector: lexical\n", "lexical"),  # the default evaluator is the detector
        ('detector: stack\nevaluate: {evaluator: "max(stack,lexical)"}\n', "stack"),
        ("detector: wordlist\nevaluate: {context_evaluator: wordlist}\n", "wordlist"),
        (  # heal's re-scoring detector chose the training data too
            "detector: oracle\nheal: {rescore_detector: contextual}\n",
            "contextual",
        ),
        ("evaluate: {context_evaluator: auto}\n", "stack"),  # auto is resolved first
    ],
)
def test_an_evaluator_that_chose_the_training_data_is_refused(tmp_path, yaml_text, culprit):
    with pytest.raises(OptimusError, match=f"evaluator .*{culprit} also chose or re-scored"):
        load_config(_cfg(tmp_path, "name: t\n" + yaml_text))


def test_both_evaluators_are_independent_by_default():
    cfg = RunConfig()
    ev = cfg.stage("evaluate")
    assert (ev.evaluator, ev.context_evaluator) == ("lexical", "contextual")
    assert cfg.pipeline_arguments()["evaluate_settings"]["context_evaluator"] == "contextual"
    # the experiments' detector: the weakened oracle, heal re-scoring with the word list
    RunConfig.model_validate(
        {"detector": "oracle+wordlist", "heal": {"rescore_detector": "wordlist"}}
    )
    off = RunConfig.model_validate(
        {"detector": "lexical", "evaluate": {"evaluator": "wordlist", "context_evaluator": None}}
    )
    assert off.stage("evaluate").context_evaluator is None
