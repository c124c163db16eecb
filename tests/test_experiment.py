"""The experiment runner on the tiny random model: shared stages, rows, report, resume."""

from __future__ import annotations

import csv
import json

import pytest

from optimus_lib.errors import OptimusError
from optimus_lib.experiment import ExperimentConfig, load_experiment, run_experiment


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
    assert by[(1.0, "no_defense")]["detector_recall"] is None  # it ignores the detector
    for r in rows:
        assert r["rtr_toxic_lo"] <= r["rtr_toxic"] <= r["rtr_toxic_hi"]
        if r["method"] == "no_defense":
            assert r["rtr_toxic_diff_lo"] is None
        else:  # paired against no_defense on the same contexts
            diff = r["rtr_toxic"] - by[(r["recall_target"], "no_defense")]["rtr_toxic"]
            assert r["rtr_toxic_diff_lo"] <= diff + 1e-9 and diff - 1e-9 <= r["rtr_toxic_diff_hi"]
        assert r["rtr_benign_lo"] <= r["rtr_benign"] <= r["rtr_benign_hi"]
    with (root / "results.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    res = json.loads((root / "results.json").read_text())
    assert {a["attack"] for a in res["attacks"]} >= {"jailbreak:print_yes", "perturb:leetspeak"}
    assert "RTR vs recall" in (root / "report.html").read_text()
    healer = {h["style"]: h for h in res["healer_attacks"]}
    assert healer["all"]["n"] == 4  # every injected toxic sample (8 x 0.5) was attacked
    assert sum(h["n"] for k, h in healer.items() if k != "all") == 4
    for h in healer.values():
        for k in ("toxic_unchecked", "toxic_after_rescore", "fallback"):
            assert 0.0 <= h[k] <= 1.0
    assert "Adaptive attack on the healer" in (root / "report.html").read_text()
    assert (root / "seed0" / "base" / "healer_attack.json").is_file()


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


def test_cells_run_in_given_order_and_results_survive_a_stop(tiny_model_dir, tmp_path, monkeypatch):
    """recalls [0.5, 1.0]: the 0.5 cell runs first (and trains no_defense); when the
    second cell dies, the first cell's rows are already in results.json / report.html."""
    import optimus_lib.experiment as experiment

    data = _exp(tiny_model_dir).model_dump()
    data.update(methods=["no_defense", "filter"], recalls=[0.5, 1.0], attacks=False)
    exp = ExperimentConfig.model_validate(data)
    real = experiment.stage_evaluate
    calls = []

    def dying(cell, *a, **kw):
        calls.append(cell.dir.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(cell, *a, **kw)

    monkeypatch.setattr(experiment, "stage_evaluate", dying)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, tmp_path, progress=False)
    assert calls == ["recall0.5", "recall1"]
    assert (tmp_path / "seed0" / "recall0.5" / "train" / "sft-all").is_dir()
    res = json.loads((tmp_path / "results.json").read_text())
    assert {(r["recall_target"], r["method"]) for r in res["rows"]} == {
        (0.5, "no_defense"),
        (0.5, "filter"),
    }
    assert "RTR vs recall" in (tmp_path / "report.html").read_text()
    # the rerun resumes: only the missing cell is trained and evaluated
    monkeypatch.setattr(experiment, "stage_evaluate", real)
    rows = run_experiment(exp, tmp_path, progress=False)
    assert {(r["recall_target"], r["method"]) for r in rows} == {
        (r, m) for r in (0.5, 1.0) for m in ("no_defense", "filter")
    }
