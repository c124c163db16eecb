"""Pipeline settings: strict YAML with one-line errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from optimus_lib.config import PipelineSettings as RunConfig
from optimus_lib.config import load_pipeline_settings as load_config
from optimus_lib.errors import OptimusError

ROOT = Path(__file__).resolve().parents[1]


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
            "train: {sft: {epochs: 2, lora: {r: 8}}, dpo: {beta: 0.1}}\n",
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
    args = cfg.pipeline_arguments()
    assert args["detector"] == "lexical" and args["method"] == "filter"
    assert args["train_settings"] == {
        "sft": {"epochs": 2.0, "lora": {"r": 8}},
        "dpo": {"beta": 0.1},
    }


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
