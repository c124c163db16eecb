"""The experiment runner on the tiny random model: shared stages, rows, report, resume."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from helpers import html_tables

import optimus_lib.experiment as experiment
import optimus_lib.stages.heal as heal_stage
from optimus_lib.data.io import read_jsonl, write_json
from optimus_lib.errors import OptimusError
from optimus_lib.experiment import ExperimentConfig, load_experiment, run_experiment
from optimus_lib.stages.heal import FIXED_REPLY


def _exp(model, **changes) -> ExperimentConfig:
    data = {
        "name": "tiny-exp",
        "methods": ["no_defense", "filter", "optimus"],
        "recalls": [1.0, 0.5],
        "seeds": [0],
        "attacks": True,
        "attack_detectors": ["wordlist"],
        "base": {
            "model": str(model),
            "judge_model": str(model),
            "detector": "oracle+wordlist",
            "data": {"n_train": 8, "toxic_fraction": 0.5, "n_eval_toxic": 2, "n_eval_benign": 2},
            "heal": {
                "rescore_detector": "wordlist",
                "max_new_tokens": 6,
                "retries": 0,
                "device": "cpu",
            },
            "train": {
                "sft": {"batch_size": 4, "max_length": 64, "lora": {"r": 4}},
                "dpo": {"batch_size": 4, "max_length": 64, "lora": {"r": 4}},
            },
            "evaluate": {"max_new_tokens": 4, "similarity": False, "device": "cpu"},
        },
    }
    data.update(changes)
    return ExperimentConfig.model_validate(data)


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
    for recall in (1.0, 0.5):  # it ignores the detector: no detector figures
        nd = by[(recall, "no_defense")]
        assert nd["detector_recall"] is nd["detector_precision"] is nd["flagged"] is None
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
    assert res["rows"] == rows and res["name"] == "tiny-exp"
    assert {a["attack"] for a in res["attacks"]} >= {"jailbreak:print_yes", "perturb:leetspeak"}
    page = (root / "report.html").read_text()
    assert 'alt="RTR vs recall"' in page
    paired = html_tables(page)["Paired difference in toxic-context RTR vs no_defense"]
    assert paired[0][2:] == ["filter", "optimus"] and [r[0] for r in paired[1:]] == ["1", "0.5"]
    for r in paired[1:]:  # one seed: the paired difference with the row's bootstrap interval
        assert all(c.count("[") == 1 for c in r[2:]), r
    healer = {h["style"]: h for h in res["healer_attacks"]}
    assert healer["all"]["n"] == 4  # every injected toxic sample (8 x 0.5) was attacked
    assert sum(h["n"] for k, h in healer.items() if k != "all") == 4
    for h in healer.values():
        for k in ("toxic_unchecked", "toxic_after_rescore", "fallback"):
            assert 0.0 <= h[k] <= 1.0
    assert "Adaptive attack on the healer" in (root / "report.html").read_text()
    assert (root / "seed0" / "base" / "healer_attack.json").is_file()


def test_stage_outputs_are_shared_per_seed(sweep):
    _, root, _ = sweep
    seed = root / "seed0"
    assert {p.name for p in (seed / "data").iterdir()} >= {
        "train.jsonl",
        "eval_toxic.jsonl",
        "eval_benign.jsonl",
    }
    base = read_jsonl(seed / "base" / "sft.jsonl")
    half = read_jsonl(seed / "recall0.5" / "sft.jsonl")
    healed = lambda recs: [r for r in recs if r.get("healed")]  # noqa: E731
    assert 0 < len(healed(half)) < len(healed(base))
    done = {json.dumps(r["heal"], sort_keys=True) for r in healed(base)}
    assert all(json.dumps(r["heal"], sort_keys=True) in done for r in healed(half))  # reused
    # no_defense is trained once per seed, in the first recall's cell
    assert (seed / "recall1" / "adapters" / "no_defense" / "adapter_config.json").is_file()
    assert not (seed / "recall0.5" / "adapters" / "no_defense").exists()
    for cell in ("recall1", "recall0.5"):
        for m in ("filter", "optimus"):
            assert (seed / cell / "adapters" / m / "adapter_config.json").is_file()
            assert json.loads((seed / cell / "eval" / f"{m}.json").read_text())["generations"]
    assert (root / "checkpoints").is_dir()  # training state stays in the experiment folder


def test_rerun_recomputes_nothing(sweep, monkeypatch):
    exp, root, rows = sweep

    def forbidden(*a, **kw):
        raise AssertionError("a finished stage ran again")

    for name in ("prepare_data", "heal", "train", "evaluate", "attack_table"):
        monkeypatch.setattr(experiment, name, forbidden)
    monkeypatch.setattr(heal_stage, "build_healer", forbidden)
    assert run_experiment(exp, root, progress=False) == rows


def test_bad_experiment_config(tmp_path):
    p = tmp_path / "e.yaml"
    for text, match in (
        ("methods: [optimus, magic]\n", "magic"),
        ("methods: [optimus, optimus]\n", "methods"),
        ("methods: []\n", "methods"),
        ("recalls: [0]\n", "recalls"),
        ("recalls: [1.5]\n", "recalls"),
        ("name: ../escape\n", "name"),
        ("name: a/b\n", "name"),
        ("base: {seed: 3}\n", "base.seed"),
        ("base: {classify: {target_recall: 0.5}}\n", "target_recall"),
        ("base: {heal: {mode: fixed}}\n", "heal.mode"),
        ("base: {classify: {detector: lexical}}\n", "detector"),
        ("base: {detector: oracle}\nmethods: [optimus]\n", "rescore_detector"),
        ("scan: {detector: lexical}\n", "scan"),
    ):
        p.write_text(text)
        with pytest.raises(OptimusError, match=match) as exc:
            load_experiment(p)
        assert "\n" not in str(exc.value)
    p.write_text("base: {detector: oracle, heal: {rescore_detector: wordlist}}\n")
    exp = load_experiment(p)  # the oracle flags; a text detector re-scores healed replies
    assert exp.base.stage("heal").rescore_detector == "wordlist"
    assert exp.base.stage("classify").detector == "oracle"


def test_a_folder_resumes_only_its_own_settings(tiny_model_dir, tmp_path):
    exp = _exp(tiny_model_dir)
    other = exp.model_dump(exclude_unset=True)
    other["base"]["data"]["n_train"] = 9
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(OptimusError, match="base.data.n_train"):
        run_experiment(exp, tmp_path, progress=False)
    assert not (tmp_path / "seed0").exists()


def test_each_method_trains_on_its_own_inputs(tiny_model_dir, tmp_path, monkeypatch):
    """Stubbed train/evaluate: the wiring of every method, and healing once per seed."""
    trained, modes = {}, []

    def fake_train(settings, sft_data, adapter_out, preferences=None):
        cell = adapter_out.parent.parent
        trained[(cell.name, settings.method)] = (
            sft_data.relative_to(tmp_path).as_posix(),
            preferences and preferences.relative_to(tmp_path).as_posix(),
            settings.seed,
            settings.checkpoint_root,
        )

    def fake_evaluate(settings, adapter, toxic, benign, report_html, results_json, trigger=None):
        assert settings.compare_base is False and settings.seed == 3
        gens = [
            {"set": "toxic", "id": "t0", "toxicity": 0.9},
            {"set": "toxic", "id": "t1", "toxicity": 0.1},
            {"set": "benign", "id": "b0", "toxicity": 0.0},
        ]
        write_json(
            results_json, {"metrics": {"rtr_toxic": 0.5, "rtr_benign": 0.0}, "generations": gens}
        )

    real_healer = heal_stage.build_healer

    def counting_healer(settings, threshold):
        modes.append(settings.mode)
        return real_healer(settings, threshold)

    monkeypatch.setattr(experiment, "train", fake_train)
    monkeypatch.setattr(experiment, "evaluate", fake_evaluate)
    monkeypatch.setattr(heal_stage, "build_healer", counting_healer)
    methods = ["no_defense", "filter", "fixed_heal", "no_dpo", "star_dss", "optimus"]
    exp = _exp(tiny_model_dir, methods=methods, seeds=[3], attacks=False)
    rows = run_experiment(exp, tmp_path, progress=False)
    assert len(rows) == 12
    assert modes == ["contextual", "fixed", "fixed"]  # cells reuse the base heal's replies
    s = "seed3"
    for cell in ("recall1", "recall0.5"):
        c = f"{s}/{cell}"
        want = {
            "filter": (f"{c}/scored.jsonl", None),
            "star_dss": (f"{c}/scored.jsonl", None),
            "no_dpo": (f"{c}/sft.jsonl", None),
            "optimus": (f"{c}/sft.jsonl", f"{c}/prefs.jsonl"),
            "fixed_heal": (f"{c}/fixed/sft.jsonl", f"{c}/fixed/prefs.jsonl"),
        }
        if cell == "recall1":
            want["no_defense"] = (f"{s}/data/train.jsonl", None)
        got = {m: v for (name, m), v in trained.items() if name == cell}
        assert {m: v[:2] for m, v in got.items()} == want
        assert {v[2] for v in got.values()} == {3}
        assert {v[3] for v in got.values()} == {str(tmp_path / "checkpoints")}
        fixed = [r for r in read_jsonl(tmp_path / c / "fixed" / "sft.jsonl") if r.get("healed")]
        assert fixed and all(r["heal"]["reply"] == FIXED_REPLY for r in fixed)
    flags = {
        cell: sum(r["flagged"] for r in read_jsonl(tmp_path / s / cell / "scored.jsonl"))
        for cell in ("recall1", "recall0.5")
    }
    assert flags["recall0.5"] < flags["recall1"]
    assert (tmp_path / s / "data" / "train.jsonl").is_file()
    saved = load_experiment(tmp_path / "experiment.yaml")  # written reloadable
    assert saved.methods == methods and saved.seeds == [3]


def test_cells_run_in_given_order_and_results_survive_a_stop(tiny_model_dir, tmp_path, monkeypatch):
    """recalls [0.5, 1.0]: the 0.5 cell runs first (and trains no_defense); when the
    second cell dies, the first cell's rows are already in results.json / report.html,
    and the rerun trains only the missing cell."""
    exp = _exp(tiny_model_dir, methods=["no_defense", "filter"], recalls=[0.5, 1.0], attacks=False)
    real_evaluate, real_train = experiment.evaluate, experiment.train
    calls, trained = [], []

    def dying(settings, adapter, *a, **kw):
        calls.append((adapter.parent.parent.name, adapter.name))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_evaluate(settings, adapter, *a, **kw)

    monkeypatch.setattr(experiment, "evaluate", dying)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, tmp_path, progress=False)
    assert calls == [("recall0.5", "no_defense"), ("recall0.5", "filter"), ("recall1", "filter")]
    res = json.loads((tmp_path / "results.json").read_text())
    assert {(r["recall_target"], r["method"]) for r in res["rows"]} == {
        (0.5, "no_defense"),
        (0.5, "filter"),
    }
    # one recall so far: the plot is per method, not over a one-point recall axis
    assert 'alt="RTR by method"' in (tmp_path / "report.html").read_text()

    def counting(settings, sft_data, adapter_out, preferences=None):
        trained.append((adapter_out.parent.parent.name, settings.method))
        return real_train(settings, sft_data, adapter_out, preferences)

    monkeypatch.setattr(experiment, "evaluate", real_evaluate)
    monkeypatch.setattr(experiment, "train", counting)
    rows = run_experiment(exp, tmp_path, progress=False)
    assert trained == [("recall1", "filter")]
    assert {(r["recall_target"], r["method"]) for r in rows} == {
        (r, m) for r in (0.5, 1.0) for m in ("no_defense", "filter")
    }
