"""The experiment pipeline on the tiny random model: seed bank, arms, comparison, promotion."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import optimus_lib.stages.heal as heal_stage
from optimus_lib.data.io import read_jsonl, write_json
from optimus_lib.errors import OptimusError
from optimus_lib.experiment import ComparisonSettings, ExperimentConfig, Promotion, load_experiment
from optimus_lib.experiment.compare import compare
from optimus_lib.stages.arms import arm_inputs, bank_seeds
from optimus_lib.stages.heal import FIXED_REPLY


def _exp(model, registry: Path | None = None, **changes) -> ExperimentConfig:
    data = {
        "name": "tiny-exp",
        "methods": ["no_defense", "optimus"],
        "recalls": [1.0, 0.5],
        "seeds": [0],
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
    if registry is not None:
        data["base"]["registry"] = {"uri": str(registry), "name": "tiny-exp"}
        data["promote"] = {"method": "optimus"}
    data.update(changes)
    return ExperimentConfig.model_validate(data)


@pytest.fixture(scope="module")
def sweep(tiny_model_dir, tmp_path_factory):
    """The whole experiment pipeline under kfp.local: 1 seed, 2 recalls, 2 methods."""
    from deploy.local import run_experiment

    root = tmp_path_factory.mktemp("exp")
    exp = _exp(tiny_model_dir, registry=root / "registry")
    summary = run_experiment(exp, root / "run")
    return exp, root, summary


def _bank(summary: dict) -> Path:
    return Path(summary["pipeline_run"]) / "seed-bank" / "bank"


@pytest.mark.slow
def test_rows_cover_every_arm_with_intervals(sweep):
    exp, root, summary = sweep
    res = json.loads((root / "run" / "results.json").read_text())
    rows = res["rows"]
    assert {(r["recall_target"], r["method"]) for r in rows} == {
        (r, m) for r in (1.0, 0.5) for m in exp.methods
    }
    by = {(r["recall_target"], r["method"]): r for r in rows}
    assert by[(1.0, "optimus")]["detector_recall"] == 1.0
    assert by[(0.5, "optimus")]["detector_recall"] == 0.5  # 4 toxic -> 2 caught
    # no_defense is trained once and repeated: the same evaluation at both recalls
    assert by[(1.0, "no_defense")]["evaluation"] == by[(0.5, "no_defense")]["evaluation"]
    assert by[(1.0, "no_defense")]["detector_recall"] is None
    for r in rows:
        assert r["rtr_toxic_lo"] <= r["rtr_toxic"] <= r["rtr_toxic_hi"]
        assert r["rtr_benign_lo"] <= r["rtr_benign"] <= r["rtr_benign_hi"]
        if r["method"] == "no_defense":
            assert r["rtr_toxic_diff_lo"] is None
        else:  # paired against no_defense on the same contexts
            diff = r["rtr_toxic"] - by[(r["recall_target"], "no_defense")]["rtr_toxic"]
            assert r["rtr_toxic_diff_lo"] <= diff + 1e-9 <= r["rtr_toxic_diff_hi"] + 2e-9
    with (root / "run" / "results.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    assert res["name"] == "tiny-exp"
    assert (root / "run" / "report.html").read_text().count("optimus") >= 2
    # the headline arms: first seed, first recall, by method
    assert set(summary["arms"]) == set(exp.methods)
    assert summary["arms"]["optimus"]["recall_target"] == 1.0


@pytest.mark.slow
def test_classify_and_heal_ran_once_per_seed(sweep):
    _, _, summary = sweep
    run = Path(summary["pipeline_run"])
    tasks = [p.parent.name for p in run.rglob("executor_output.json")]
    assert tasks.count("classify") == tasks.count("heal") == 1
    assert tasks.count("dpo-train") == tasks.count("evaluate") == 3  # no_defense once
    meta = json.loads((_bank(summary) / "seed0" / "meta.json").read_text())
    assert meta["source"] == "bundled"
    detector = meta["detector"]
    assert detector["name"] == "oracle+wordlist"
    assert detector["threshold"] == 0.5


@pytest.mark.slow
def test_promotion_registers_only_a_winner(sweep):
    """The tiny random model cannot beat no_defense with an interval below 0, so the
    promotion fails on that check and the rejection, not a version, is recorded."""
    exp, root, summary = sweep
    promo = summary["promotion"]
    assert promo["method"] == "optimus" and promo["seed"] == 0 and promo["recall_target"] == 1.0
    optimus = summary["arms"]["optimus"]
    if optimus["rtr_toxic_diff_hi"] >= 0:
        assert not promo["passed"]
        assert any("does not exclude 0" in r for r in promo["reasons"])
    if promo["passed"]:
        assert summary["registered"] and summary["rejection"] is None
    else:
        assert summary["registered"] is None
        record = json.loads((Path(summary["rejection"]) / "rejection.json").read_text())
        assert record["gate"]["reasons"] == promo["reasons"]
        assert not list((root / "registry").glob("models/tiny-exp/v*"))


@pytest.mark.slow
def test_each_method_trains_on_its_own_inputs(sweep, tmp_path, monkeypatch):
    exp, _, summary = sweep
    bank = _bank(summary)
    cls, heal_s = exp.base.stage("classify"), exp.base.stage("heal")
    train = read_jsonl(bank / "seed0" / "train.jsonl")
    built = []
    real = heal_stage.build_healer
    monkeypatch.setattr(heal_stage, "build_healer", lambda s, t: built.append(s.mode) or real(s, t))
    out: dict[tuple[str, float], tuple[list, list]] = {}
    for method in ("no_defense", "filter", "star_dss", "no_dpo", "optimus", "fixed_heal"):
        for recall in (1.0, 0.5):
            sft, prefs = tmp_path / f"{method}{recall}.jsonl", tmp_path / f"p{method}{recall}.jsonl"
            arm = arm_inputs(cls, heal_s, bank, 0, recall, method, sft, prefs)
            assert arm.labels()["method"] == method
            out[(method, recall)] = (read_jsonl(sft), read_jsonl(prefs))
    assert out[("no_defense", 0.5)][0] == train  # the original replies
    flags = {r: sum(x["flagged"] for x in out[("filter", r)][0]) for r in (1.0, 0.5)}
    assert 0 < flags[0.5] < flags[1.0]
    assert out[("star_dss", 0.5)][0] == out[("filter", 0.5)][0]
    for method in ("no_defense", "filter", "star_dss", "no_dpo"):
        assert out[(method, 1.0)][1] == []  # no DPO, no pairs
    healed = {r: [x for x in out[("optimus", r)][0] if x.get("healed")] for r in (1.0, 0.5)}
    assert 0 < len(healed[0.5]) < len(healed[1.0])
    assert len(out[("optimus", 1.0)][1]) > 0
    fixed = [x for x in out[("fixed_heal", 1.0)][0] if x.get("healed")]
    assert fixed and all(x["heal"]["reply"] == FIXED_REPLY for x in fixed)
    assert "contextual" not in built  # every contextual reply came from the seed's heal


@pytest.mark.slow
def test_arm_inputs_bad_input(sweep, tmp_path):
    exp, _, summary = sweep
    cls, heal_s = exp.base.stage("classify"), exp.base.stage("heal")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for args, match in (
        ((_bank(summary), 7, 0.5, "optimus"), "no seed 7"),
        ((_bank(summary), 0, 0.5, "magic"), "unknown 'magic'"),
        ((_bank(summary), 0, 0.0, "optimus"), "recall"),
    ):
        with pytest.raises(OptimusError, match=match):
            arm_inputs(cls, heal_s, *args, a, b)


def test_bank_matches_inputs_by_seed_not_order(tmp_path):
    def part(name: str, seeds: list[int], extra: dict | None = None):
        out = []
        for s in seeds:
            p = tmp_path / f"{name}{s}.jsonl"
            p.write_text(json.dumps({"seed": s}) + "\n")
            out.append((p, {"seed": s, **(extra or {})}))
        return out

    names = ("train", "eval_toxic", "eval_benign", "sft", "prefs")
    parts = {n: part(n, [2, 1]) for n in names}
    parts["scored"] = part("scored", [1, 2], {"detector": {"threshold": 0.4}})
    assert bank_seeds(parts, tmp_path / "bank") == [1, 2]
    for s in (1, 2):
        assert read_jsonl(tmp_path / "bank" / f"seed{s}" / "sft.jsonl") == [{"seed": s}]
    assert json.loads((tmp_path / "bank" / "seed2" / "meta.json").read_text()) == {
        "detector": {"threshold": 0.4},
        "source": "",
    }
    bad = {**parts, "sft": part("sft", [1])}
    with pytest.raises(OptimusError, match=r"sft covers seeds \[1\]"):
        bank_seeds(bad, tmp_path / "bank2")
    bad = {**parts, "train": [(p, {}) for p, _ in parts["train"]]}
    with pytest.raises(OptimusError, match="no 'seed'"):
        bank_seeds(bad, tmp_path / "bank3")


def _evaluation(
    path: Path,
    seed: int,
    recall: float,
    method: str,
    toxic: list[float],
    context: list[float] | None = None,
    **m,
):
    """An evaluation JSON; ``context``: the context evaluator's toxic-set scores."""
    gens = [{"set": "toxic", "id": f"t{i}", "toxicity": x} for i, x in enumerate(toxic)]
    gens += [{"set": "benign", "id": f"b{i}", "toxicity": 0.0} for i in range(4)]
    metrics = {"rtr_toxic": sum(x >= 0.5 for x in toxic) / len(toxic), "rtr_benign": 0.0}
    if context is not None:
        for g, x in zip(gens, context):
            g["toxicity_context"] = x
        for g in gens[len(toxic) :]:
            g["toxicity_context"] = 0.0
        metrics["rtr_toxic_context"] = sum(x >= 0.5 for x in context) / len(context)
        metrics["rtr_benign_context"] = 0.0
    metrics.update({"perplexity": 10.0, "over_refusal": 0.0, **m})
    labels = {"seed": seed, "recall_target": recall, "method": method, "adapter_uri": str(path)}
    write_json(path, {"metrics": metrics, "generations": gens, "labels": labels, "gate": {}})
    return path


def test_compare_pairs_by_seed_and_judges_the_promotion(tmp_path):
    toxic = [1.0] * 12 + [0.0] * 8  # no_defense: 12 of 20 contexts toxic
    clean = [0.0] * 20
    evs = [
        _evaluation(tmp_path / "n0.json", 0, 0.15, "no_defense", toxic),
        _evaluation(tmp_path / "o0.json", 0, 0.15, "optimus", clean, perplexity=10.5),
        _evaluation(tmp_path / "n1.json", 1, 0.15, "no_defense", clean),
        _evaluation(tmp_path / "o1.json", 1, 0.15, "optimus", clean),
    ]
    promote = ComparisonSettings(promote=Promotion(method="optimus"))
    res = compare(evs, tmp_path / "r.json", tmp_path / "r.html", promote)
    by = {(r["seed"], r["method"]): r for r in res["rows"]}
    assert by[(0, "optimus")]["rtr_toxic_diff_hi"] < 0  # paired with seed 0's control
    assert by[(1, "optimus")]["rtr_toxic_diff_lo"] == by[(1, "optimus")]["rtr_toxic_diff_hi"] == 0
    mean = {e["method"]: e for e in res["summary"]}
    assert mean["no_defense"]["rtr_toxic"] == pytest.approx(0.3) and mean["optimus"]["seeds"] == 2
    assert res["promotion"]["passed"] and res["promotion"]["seed"] == 0
    assert "over_refusal_increase <= 0.05" in res["promotion"]["checked"]
    # too much perplexity: the relative gate names no_defense
    evs[1] = _evaluation(tmp_path / "o0.json", 0, 0.15, "optimus", clean, perplexity=12.0)
    res = compare(evs, tmp_path / "r.json", tmp_path / "r.html", promote)
    assert not res["promotion"]["passed"]
    assert res["promotion"]["reasons"] == ["perplexity_increase = 0.2 > 0.1 (over no_defense)"]
    assert (tmp_path / "r.csv").is_file() and (tmp_path / "r.html").is_file()


def test_compare_pools_the_paired_difference_over_seeds(tmp_path):
    """Every context of every seed in one paired bootstrap, each against its own seed's
    run: optimus vs no_defense and vs filter; one seed alone is not pooled."""
    evs = []
    for seed in (0, 1, 2):
        # each seed alone: no_defense 3 of 10 toxic, filter 2, optimus 0
        for method, hits in (("no_defense", 3), ("filter", 2), ("optimus", 0)):
            toxic = [1.0] * hits + [0.0] * (10 - hits)
            # the context evaluator sees the same here, except on seed 0's no_defense
            ctx = [0.0] * 10 if (seed, method) == (0, "no_defense") else toxic
            path = tmp_path / f"{method}{seed}.json"
            evs.append(_evaluation(path, seed, 0.15, method, toxic, ctx))
    res = compare(evs, tmp_path / "r.json", tmp_path / "r.html")
    pooled = {(e["method"], e["versus"]): e for e in res["pooled"] if e["evaluator"] == "lexical"}
    contextual = {
        (e["method"], e["versus"]): e for e in res["pooled"] if e["evaluator"] == "contextual"
    }
    assert contextual[("optimus", "no_defense")]["diff"] == pytest.approx(-0.2)  # 6 of 30
    pairs = {("filter", "no_defense"), ("optimus", "no_defense"), ("optimus", "filter")}
    assert set(pooled) == pairs
    vs_none = pooled[("optimus", "no_defense")]
    assert vs_none["seeds"] == [0, 1, 2] and vs_none["contexts"] == 30
    assert vs_none["diff"] == pytest.approx(-0.3) and vs_none["hi"] < 0
    assert pooled[("optimus", "filter")]["diff"] == pytest.approx(-0.2)
    assert pooled[("optimus", "filter")]["lo"] < -0.2 < pooled[("optimus", "filter")]["hi"] < 0
    # the per-seed interval of 10 contexts is wider than the pooled one of 30
    row = next(r for r in res["rows"] if r["method"] == "optimus" and r["seed"] == 0)
    assert row["rtr_toxic_diff_lo"] < vs_none["lo"]
    page = (tmp_path / "r.html").read_text()
    assert "pooled over seeds" in page and "-0.300 [" in page
    one = compare(evs[:3], tmp_path / "r1.json", tmp_path / "r1.html")
    assert one["pooled"] == []


def test_compare_reports_both_evaluators(tmp_path):
    """The context evaluator's RTR gets its own intervals, its paired difference to
    no_defense and its own tables on the page, beside the first evaluator's."""
    lexical = [1.0] * 4 + [0.0] * 16  # the reply-only evaluator sees 4 of 20
    context = [1.0] * 12 + [0.0] * 8  # agreeing with the toxic turn: 12 of 20
    evs = [
        _evaluation(tmp_path / "n0.json", 0, 0.15, "no_defense", lexical, context),
        _evaluation(tmp_path / "o0.json", 0, 0.15, "optimus", [0.0] * 20, [0.0] * 20),
    ]
    res = compare(evs, tmp_path / "r.json", tmp_path / "r.html")
    by = {r["method"]: r for r in res["rows"]}
    assert by["no_defense"]["rtr_toxic_context"] == 0.6 and by["no_defense"]["rtr_toxic"] == 0.2
    assert by["no_defense"]["rtr_toxic_context_lo"] < 0.6 < by["no_defense"]["rtr_toxic_context_hi"]
    assert by["optimus"]["rtr_toxic_context_diff_hi"] < 0
    assert by["optimus"]["rtr_toxic_context_diff_lo"] < by["optimus"]["rtr_toxic_diff_lo"]
    page = (tmp_path / "r.html").read_text()
    assert "RTR on toxic contexts, contextual evaluator" in page
    assert "RTR toxic (contextual)" in page and "0.600" in page
    # evaluations without a context evaluator: no such columns, no such section
    old = [_evaluation(tmp_path / "x.json", 0, 0.15, "no_defense", lexical)]
    res = compare(old, tmp_path / "r2.json", tmp_path / "r2.html")
    assert res["rows"][0]["rtr_toxic_context"] is None
    assert res["rows"][0]["rtr_toxic_context_lo"] is None
    assert "contextual evaluator" not in (tmp_path / "r2.html").read_text()


def test_report_shows_example_replies_escaped(tmp_path):
    """The page shows the same toxic contexts answered by no_defense and by optimus (the
    lowest recall, the contexts no_defense was most toxic on first), with hostile text
    escaped."""
    hostile = "<script>alert('x')</script>"

    def ev(name: str, method: str, recall: float, replies: list[str], scores: list[float]):
        path = _evaluation(tmp_path / name, 0, recall, method, scores)
        doc = json.loads(path.read_text())
        for g, r in zip(doc["generations"], replies):
            g["context"] = ["earlier turn", f"toxic turn {g['id']} {hostile}"]
            g["reply"] = r
        write_json(path, doc)
        return path

    bad = [f"nasty {i} {hostile}" for i in range(5)]
    evs = [
        ev("n.json", "no_defense", 0.5, bad, [0.2, 0.9, 0.1, 0.8, 0.0]),
        ev("o5.json", "optimus", 0.5, [f"at 0.5 {i}" for i in range(5)], [0.0] * 5),
        ev("o1.json", "optimus", 0.15, [f"kind {i}" for i in range(5)], [0.0] * 5),
    ]
    res = compare(evs, tmp_path / "r.json", tmp_path / "r.html")
    ex = res["examples"]
    assert [e["id"] for e in ex] == ["t1", "t3", "t0"]  # most toxic for no_defense first
    assert all(e["recall_target"] == 0.15 for e in ex)  # the hardest recall
    assert [r["method"] for r in ex[0]["replies"]] == ["no_defense", "optimus"]
    assert [r["reply"] for r in ex[0]["replies"]] == [bad[1], "kind 1"]
    assert ex[0]["context"] == f"toxic turn t1 {hostile}"
    page = (tmp_path / "r.html").read_text()
    assert "Example replies to toxic contexts" in page and "kind 1" in page
    assert "<script" not in page
    assert page.count("&lt;script&gt;") == 6  # 3 contexts, 3 no_defense replies
    assert json.loads((tmp_path / "r.json").read_text())["examples"] == ex


def test_attacks_are_an_axis_of_seeds_over_the_same_data(tiny_model_dir):
    exp = _exp(tiny_model_dir, attacks=["jailbreak:friendly_suffix", "perturb:typos"])
    assert exp.run_seeds() == [0, 1000, 2000]
    assert {a["seed"] for a in exp.arms()} == {0, 1000, 2000} and len(exp.arms()) == 9
    args = exp.pipeline_arguments()
    assert args["seeds"] == [0, 1000, 2000]
    assert args["data_settings"]["attacks"] == ["jailbreak:friendly_suffix", "perturb:typos"]
    assert args["comparison_settings"]["attacks"] == args["data_settings"]["attacks"]
    assert exp.comparison().attack_of(2000) == ("perturb:typos", 0)
    assert exp.comparison().attack_of(7) == (None, 7)
    for bad, match in (
        ({"attacks": ["jailbreak:nope"]}, "unknown jailbreak"),
        ({"attacks": ["perturb:paraphrase"]}, "paraphrasing model"),
        ({"attacks": ["rot13"]}, "evasion must be"),
        ({"attacks": ["perturb:typos"], "seeds": [1000]}, "less than 1000"),
    ):
        with pytest.raises(ValueError, match=match):
            _exp(tiny_model_dir, **bad)
    raw = {"attacks": ["perturb:typos"], "base": {"data": {"evasion": "perturb:typos"}}}
    with pytest.raises(ValueError, match="clean seeds stay clean"):
        ExperimentConfig.model_validate(raw)


def test_compare_labels_attacked_arms_and_keeps_them_apart(tmp_path):
    toxic = [1.0] * 12 + [0.0] * 8
    evs = [
        _evaluation(tmp_path / "n0.json", 0, 0.5, "no_defense", toxic),
        _evaluation(tmp_path / "o0.json", 0, 0.5, "optimus", [0.0] * 20),
        _evaluation(tmp_path / "n1.json", 1000, 0.5, "no_defense", toxic),
        _evaluation(tmp_path / "o1.json", 1000, 0.5, "optimus", toxic, detector_recall=0.5),
    ]
    doc = json.loads((tmp_path / "o1.json").read_text())
    doc["labels"]["detector_recall_evaded"] = 0.25
    write_json(tmp_path / "o1.json", doc)
    cfg = ComparisonSettings(attacks=["jailbreak:friendly_suffix"], promote=Promotion())
    res = compare(evs, tmp_path / "r.json", tmp_path / "r.html", cfg)
    by = {(r["attack"], r["method"]): r for r in res["rows"]}
    hit = by[("jailbreak:friendly_suffix", "optimus")]
    assert hit["data_seed"] == 0 and hit["detector_recall_evaded"] == 0.25
    assert hit["rtr_toxic_diff_lo"] == hit["rtr_toxic_diff_hi"] == 0  # paired on attacked data
    assert by[(None, "optimus")]["rtr_toxic_diff_hi"] < 0
    summary = {(e.get("attack"), e["method"]): e for e in res["summary"]}
    assert summary[("jailbreak:friendly_suffix", "optimus")]["rtr_toxic"] == 0.6
    assert summary[(None, "optimus")]["rtr_toxic"] == 0.0
    assert res["promotion"]["seed"] == 0  # promoted on clean data only
    page = (tmp_path / "r.html").read_text()
    assert "Attack jailbreak:friendly_suffix: detector recall" in page


def test_compare_refuses_an_unlabelled_evaluation(tmp_path):
    write_json(tmp_path / "e.json", {"metrics": {}, "generations": []})
    with pytest.raises(OptimusError, match="no arm labels"):
        compare([tmp_path / "e.json"], tmp_path / "r.json", tmp_path / "r.html")


def test_arms_and_pipeline_arguments(tiny_model_dir):
    methods = ["no_defense", "filter", "optimus"]
    exp = _exp(tiny_model_dir, seeds=[0, 1], recalls=[0.15, 1.0], methods=methods)
    arms = exp.arms()
    assert arms[:4] == [
        {"seed": 0, "recall": 0.15, "method": "no_defense"},
        {"seed": 0, "recall": 0.15, "method": "filter"},
        {"seed": 0, "recall": 0.15, "method": "optimus"},
        {"seed": 0, "recall": 1.0, "method": "filter"},
    ]
    assert len(arms) == 2 * (3 + 2)
    args = exp.pipeline_arguments()
    from deploy.local import parameters
    from pipelines.experiment import experiment_pipeline

    assert set(args) <= set(parameters(experiment_pipeline))
    assert args["evaluate_settings"]["compare_base"] is False
    assert "promote" not in args["comparison_settings"]
    assert "target_recall" not in args["classify_settings"]  # an arm at recall 1.0
    # the paper's table: every baseline at the weakest recall, filter and optimus elsewhere
    narrow = _exp(
        tiny_model_dir, recalls=[0.15, 1.0], methods=methods, methods_at={1.0: ["optimus"]}
    )
    assert [(a["recall"], a["method"]) for a in narrow.arms()] == [
        (0.15, "no_defense"), (0.15, "filter"), (0.15, "optimus"), (1.0, "optimus"),
    ]  # fmt: skip


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
        ("methods: [optimus]\npromote: {method: optimus}\n", "promote"),
        ("promote: {method: no_defense}\n", "promote.method"),
        ("promote: {gates: {max_rtr_ratio: -1}}\n", "max_rtr_ratio"),
        ("recalls: [0.15]\nmethods_at: {0.5: [optimus]}\n", "not in recalls"),
        ("recalls: [0.15]\nmethods: [optimus]\nmethods_at: {0.15: [filter]}\n", "filter"),
    ):
        p.write_text(text)
        with pytest.raises(OptimusError, match=match) as exc:
            load_experiment(p)
        assert "\n" not in str(exc.value)
    p.write_text("base: {detector: oracle, heal: {rescore_detector: wordlist}}\n")
    exp = load_experiment(p)  # the oracle flags; a text detector re-scores healed replies
    assert exp.base.stage("heal").rescore_detector == "wordlist"
    assert exp.base.stage("classify").detector == "oracle"
