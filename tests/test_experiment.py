"""The experiment runner on the tiny random model: shared stages, rows, report, resume."""

from __future__ import annotations

import csv
import json

import pytest

from optimus.errors import OptimusError
from optimus.experiment import ExperimentConfig, load_experiment, run_experiment


def _exp(model) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "name": "tiny-exp",
            "methods": ["no_defense", "filter", "optimus"],
            "recalls": [1.0, 0.5],
            "seeds": [0],
            "attacks": True,
            "attack_detectors": ["wordlist"],
            "base": {
                "model": str(model),
                "device": "cpu",
                "data": {
                    "n_train": 8,
                    "toxic_fraction": 0.5,
                    "n_eval_toxic": 2,
                    "n_eval_benign": 2,
                },
                "scan": {"detector": "oracle+wordlist"},
                "heal": {"max_new_tokens": 6, "retries": 0, "rescore_detector": "wordlist"},
                "train": {
                    "sft": {"batch_size": 4, "max_length": 64, "lora": {"r": 4}},
                    "dpo": {"batch_size": 4, "max_length": 64, "lora": {"r": 4}},
                    "merge": True,
                },
                "evaluate": {"max_new_tokens": 4, "similarity": False},
            },
        }
    )


@pytest.fixture(scope="module")
def sweep(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    exp = _exp(tiny_model_dir)
    return exp, root, run_experiment(exp, root, progress=False)


def test_rows_cover_every_cell(sweep):
    exp, root, rows = sweep
    cells = {(r["recall_target"], r["method"]) for r in rows}
    assert cells == {(r, m) for r in (1.0, 0.5) for m in exp.methods}
    by = {(r["recall_target"], r["method"]): r for r in rows}
    assert by[(1.0, "filter")]["detector_recall"] == 1.0
    assert by[(0.5, "filter")]["detector_recall"] == 0.5  # 4 toxic -> 2 caught
    # no_defense is trained once and repeated: same numbers at both recalls
    assert by[(1.0, "no_defense")]["perplexity"] == by[(0.5, "no_defense")]["perplexity"]
    with (root / "results.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    res = json.loads((root / "results.json").read_text())
    assert {a["attack"] for a in res["attacks"]} >= {"jailbreak:print_yes", "perturb:leetspeak"}
    assert "RTR vs recall" in (root / "report.html").read_text()


def test_shared_stages_and_merge(sweep):
    _, root, _ = sweep
    assert not (root / "seed0" / "recall0.5" / "train" / "sft-all").exists()
    heal_half = (root / "seed0" / "recall0.5" / "heal.jsonl").read_text().splitlines()
    heal_base = (root / "seed0" / "base" / "heal.jsonl").read_text().splitlines()
    assert 0 < len(heal_half) < len(heal_base)
    healed = {json.loads(x)["healed"] for x in heal_base}
    assert all(json.loads(x)["healed"] in healed for x in heal_half)  # reused, not regenerated
    assert (root / "seed0" / "recall1" / "merged" / "optimus" / "model.safetensors").is_file()


def test_rerun_recomputes_nothing(sweep):
    exp, root, rows = sweep
    stamp = (root / "seed0" / "recall1" / "stages.json").read_text()
    again = run_experiment(exp, root, progress=False)
    assert again == rows
    assert (root / "seed0" / "recall1" / "stages.json").read_text() == stamp


def test_bad_experiment_config(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text("methods: [optimus, magic]\n")
    with pytest.raises(OptimusError, match="magic"):
        load_experiment(p)
    p.write_text("recalls: [0]\n")
    with pytest.raises(OptimusError, match="recalls"):
        load_experiment(p)
