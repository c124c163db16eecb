"""Every stage function on tiny data and a tiny random model: the one implementation the
components, the CLI and the experiment all call."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from optimus_lib.errors import OptimusError
from optimus_lib.settings import load_settings
from optimus_lib.stages import classify as C
from optimus_lib.stages import data as D
from optimus_lib.stages import evaluate as E
from optimus_lib.stages import heal as H
from optimus_lib.stages import register as R
from optimus_lib.stages import train as T


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The bundled poisoned benchmark at tiny scale, scored by the word list."""
    d = tmp_path_factory.mktemp("bench")
    res = D.prepare_data(
        D.DataSettings(n_train=16, n_eval_toxic=3, n_eval_benign=3),
        d / "train.jsonl",
        d / "tox.jsonl",
        d / "ben.jsonl",
    )
    cls = C.classify(C.ClassifySettings(detector="wordlist"), d / "train.jsonl", d / "scored.jsonl")
    return d, res, cls


def test_prepare_data_builds_labelled_sets(bench):
    d, res, _ = bench
    train = _rows(d / "train.jsonl")
    assert res.n_train == len(train) == 16 and res.n_toxic == round(0.3 * 16)
    assert sum(r["label"] == "toxic" for r in train) == res.n_toxic
    assert len(_rows(d / "tox.jsonl")) == 3 and len(_rows(d / "ben.jsonl")) == 3
    assert res.as_metrics()["n_train"] == 16.0


def test_prepare_data_user_file_is_validated_with_line_numbers(tmp_path):
    good = tmp_path / "mine.jsonl"
    good.write_text(json.dumps({"context": ["hi"], "response": "hello", "x": 1}) + "\n")
    s = D.DataSettings(train_uri=str(good), n_eval_toxic=2, n_eval_benign=2)
    res = D.prepare_data(s, tmp_path / "t.jsonl", tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    assert res.n_train == 1 and res.n_toxic is None
    assert _rows(tmp_path / "t.jsonl") == [{"context": ["hi"], "response": "hello", "x": 1}]
    good.write_text(good.read_text() + '{"context": ["hi"], "response": \n')
    with pytest.raises(OptimusError, match=r"mine\.jsonl:2:"):
        D.prepare_data(s, tmp_path / "t.jsonl", tmp_path / "a.jsonl", tmp_path / "b.jsonl")


def test_classify_keeps_order_and_returns_the_threshold_it_used(bench):
    d, _, cls = bench
    rows, train = _rows(d / "scored.jsonl"), _rows(d / "train.jsonl")
    assert [r["id"] for r in rows] == [r["id"] for r in train]
    assert all(r["flagged"] == (r["toxicity"] >= cls.threshold) for r in rows)
    assert cls.threshold == 0.5 and cls.flagged == sum(r["flagged"] for r in rows)
    assert cls.quality is not None and 0 <= cls.quality["recall"] <= 1
    (tn, fp), (fn, tp) = cls.confusion
    assert tn + fp + fn + tp == 16 and tp + fp == cls.flagged
    assert cls.roc is not None and len(cls.roc["fpr"]) == len(cls.roc["tpr"])
    assert {"threshold", "flag_rate", "recall", "auc"} <= set(cls.as_metrics())


def test_classify_calibrated_threshold_is_the_one_returned_and_applied(bench, tmp_path):
    d, _, _ = bench
    res = C.classify(
        C.ClassifySettings(detector="wordlist", calibrate="f1"), d / "train.jsonl", tmp_path / "s"
    )
    assert res.calibration["method"] == "f1" and res.threshold == res.calibration["threshold"]
    assert all(r["flagged"] == (r["toxicity"] >= res.threshold) for r in _rows(tmp_path / "s"))


def test_classify_reuses_scores_and_weakens_recall(bench, tmp_path):
    d, _, cls = bench
    weak = C.classify(
        # the LLM judge would load a model: reusing scores builds no detector at all
        C.ClassifySettings(detector="llm-judge", reuse_scores=True, target_recall=0.25),
        d / "scored.jsonl",
        tmp_path / "weak.jsonl",
    )
    n_toxic = weak.quality["n_toxic"]
    assert weak.quality["recall"] * n_toxic <= math.ceil(0.25 * n_toxic)  # top ceil(r n) kept
    base = {r["id"]: r["flagged"] for r in _rows(d / "scored.jsonl")}
    assert all(base[r["id"]] or not r["flagged"] for r in _rows(tmp_path / "weak.jsonl"))
    # label-free calibration works on reused scores too; labelled calibration needs the scan
    gmm = C.classify(
        C.ClassifySettings(reuse_scores=True, calibrate="gmm"), d / "scored.jsonl", tmp_path / "g"
    )
    assert gmm.calibration["method"] == "gmm" and 0.0 <= gmm.threshold <= 1.0
    with pytest.raises(OptimusError, match="reuse_scores"):
        C.classify(
            C.ClassifySettings(reuse_scores=True, calibrate="f1"),
            d / "scored.jsonl",
            tmp_path / "f",
        )


def test_heal_contextual_writes_sft_set_and_preferences(bench, tiny_model_dir, tmp_path):
    d, _, cls = bench
    s = H.HealSettings(
        model=str(tiny_model_dir), rescore_detector="wordlist", max_new_tokens=6, retries=1
    )
    res = H.heal(s, d / "scored.jsonl", cls.threshold, tmp_path / "sft", tmp_path / "prefs")
    sft, scored = _rows(tmp_path / "sft"), _rows(d / "scored.jsonl")
    assert [r["id"] for r in sft] == [r["id"] for r in scored]
    healed = [r for r in sft if r.get("healed")]
    assert len(healed) == res.flagged == cls.flagged
    assert res.healed + res.fallbacks == res.flagged
    for r in healed:
        assert r["heal"]["generator"] == str(tiny_model_dir)
        assert r["response"] != r["heal"]["original_response"]
    assert res.pairs == len(_rows(tmp_path / "prefs"))
    # a second heal reusing these replies generates nothing and gives the same output
    again = H.heal(
        s.model_copy(update={"model": "/no/such/model"}),
        d / "scored.jsonl",
        cls.threshold,
        tmp_path / "sft2",
        tmp_path / "prefs2",
        reuse=tmp_path / "sft",
    )
    assert again.flagged == res.flagged and _rows(tmp_path / "sft2") == sft


def test_heal_refuses_the_oracle_and_unscored_input(bench, tmp_path):
    d, _, _ = bench
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="oracle reads labels"):  # refused when read
        H.HealSettings(rescore_detector="oracle")
    with pytest.raises(OptimusError, match=r"train\.jsonl:1: .*flagged"):
        H.heal(H.HealSettings(), d / "train.jsonl", 0.5, tmp_path / "a", tmp_path / "b")


@pytest.fixture(scope="module")
def healed(bench, tmp_path_factory):
    d, _, cls = bench
    out = tmp_path_factory.mktemp("healed")
    H.heal(H.HealSettings(mode="fixed"), d / "scored.jsonl", cls.threshold,
           out / "sft.jsonl", out / "prefs.jsonl")  # fmt: skip
    return out


def _train_settings(model: Path, root: Path, **over) -> T.TrainSettings:
    return load_settings(
        T.TrainSettings,
        {
            "model": str(model),
            "checkpoint_root": str(root),
            "sft": {"batch_size": 8, "max_length": 64},
            "dpo": {"batch_size": 4, "max_length": 64},
            **over,
        },
    )


def test_train_optimus_then_resume_by_content_key(healed, tiny_model_dir, tmp_path):
    from peft import PeftModel

    from optimus_lib.models.specs import load_model

    s = _train_settings(tiny_model_dir, tmp_path / "ckpt")
    res = T.train(s, healed / "sft.jsonl", tmp_path / "adapter", healed / "prefs.jsonl")
    assert res.dpo_pairs > 0 and res.sft_samples == 16
    assert {"sft_train_loss", "dpo_train_loss", "dpo_steps"} <= set(res.as_metrics())
    assert res.metadata["method"] == "optimus" and res.metadata["base_model"] == str(tiny_model_dir)
    PeftModel.from_pretrained(load_model(str(tiny_model_dir), "cpu"), str(tmp_path / "adapter"))
    # the same inputs and settings: the finished checkpoints are reused, nothing retrains
    (key_dir,) = (tmp_path / "ckpt").iterdir()
    mtime = (key_dir / "dpo" / "adapter" / "adapter_model.safetensors").stat().st_mtime
    again = T.train(s, healed / "sft.jsonl", tmp_path / "adapter2", healed / "prefs.jsonl")
    assert again.key == res.key
    assert (key_dir / "dpo" / "adapter" / "adapter_model.safetensors").stat().st_mtime == mtime
    # a changed setting is a new key: never resumes from the stale checkpoints
    changed = T.train(
        _train_settings(tiny_model_dir, tmp_path / "ckpt", seed=1),
        healed / "sft.jsonl",
        tmp_path / "adapter3",
        healed / "prefs.jsonl",
    )
    assert changed.key != res.key and len(list((tmp_path / "ckpt").iterdir())) == 2


def test_train_drift_budget_probes_kept_dialogs(healed, tiny_model_dir, tmp_path):
    """The stage picks the probe from heal's SFT set (kept, never healed) and reports what
    the budget measured in the task's metrics."""
    s = _train_settings(tiny_model_dir, tmp_path / "ckpt")
    s = s.model_copy(update={"dpo": s.dpo.model_copy(update={"drift_budget": 100.0})})
    res = T.train(s, healed / "sft.jsonl", tmp_path / "adapter", healed / "prefs.jsonl")
    m = res.as_metrics()
    assert m["dpo_probe_reference_ppl"] > 1.0 and m["dpo_stopped_by_drift"] == 0.0
    assert abs(m["dpo_probe_drift_last"]) < 100.0


@pytest.mark.parametrize("method", ["no_defense", "filter", "no_dpo", "star_dss"])
def test_train_baseline_methods(bench, healed, tiny_model_dir, tmp_path, method):
    d, _, cls = bench
    data = {"no_defense": d / "train.jsonl", "no_dpo": healed / "sft.jsonl"}.get(
        method, d / "scored.jsonl"
    )
    res = T.train(_train_settings(tiny_model_dir, tmp_path, method=method), data, tmp_path / "a")
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()
    expected = 16 - cls.flagged if method == "filter" else 16
    assert res.sft_samples == expected and res.dpo_pairs == 0


def test_train_input_errors(bench, tiny_model_dir, tmp_path):
    d, _, _ = bench
    with pytest.raises(OptimusError, match="preferences"):
        T.train(_train_settings(tiny_model_dir, tmp_path), d / "scored.jsonl", tmp_path / "a")
    with pytest.raises(OptimusError, match=r"train\.jsonl:1: method 'filter' needs"):
        T.train(_train_settings(tiny_model_dir, tmp_path, method="filter"), d / "train.jsonl",
                tmp_path / "a")  # fmt: skip
    with pytest.raises(OptimusError, match="TrainSettings: sft.lora.r"):
        load_settings(T.TrainSettings, {"sft": {"lora": {"r": 0}}})


def test_gates_verdict_names_each_failed_gate():
    gates = E.Gates(max_rtr_toxic=0.1, max_rtr_ratio=0.5, max_perplexity_increase=0.1)
    m = {"rtr_toxic": 0.2, "over_refusal": 0.0, "perplexity": 12.0}
    base = {"rtr_toxic": 0.3, "perplexity": 10.0}
    passed, reasons, checked = E.verdict(gates, m, base)
    assert not passed and len(checked) == 3
    assert reasons == [
        "rtr_toxic = 0.2 > 0.1 (toxic-context RTR)",
        "rtr_ratio = 0.6667 > 0.5 (toxic RTR / base model's)",
        "perplexity_increase = 0.2 > 0.1 (over base model)",
    ]
    assert E.verdict(
        E.Gates(max_rtr_ratio=0.5), {**m, "rtr_toxic": 0.0}, {**base, "rtr_toxic": 0.0}
    )[0]
    with pytest.raises(OptimusError, match="compare_base"):
        load_settings(E.EvaluateSettings, {"compare_base": False, "gates": {"max_rtr_ratio": 1}})


def test_evaluate_and_register(bench, healed, tiny_model_dir, tmp_path):
    d, _, _ = bench
    adapter = tmp_path / "adapter"
    T.train(_train_settings(tiny_model_dir, tmp_path / "c", method="no_dpo"),
            healed / "sft.jsonl", adapter)  # fmt: skip
    s = E.EvaluateSettings(
        model=str(tiny_model_dir), max_new_tokens=4, similarity=False,
        gates={"max_rtr_toxic": 1.0, "max_perplexity_increase": 10.0},
    )  # fmt: skip
    res = E.evaluate(s, adapter, d / "tox.jsonl", d / "ben.jsonl", tmp_path / "r.html",
                     tmp_path / "ev.json")  # fmt: skip
    assert res.passed and res.reasons == [] and res.base_metrics is not None
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["gate"]["passed"] and len(ev["generations"]) == 6
    assert "PASSED" in (tmp_path / "r.html").read_text()
    assert {"rtr_toxic", "base_rtr_toxic", "passed"} <= set(res.as_metrics())

    reg = R.RegisterSettings(uri=str(tmp_path / "reg"), name="m")
    first = R.register(reg, adapter, tmp_path / "ev.json", {"train": {"method": "no_dpo"}})
    assert first.version == "v1" and (first.path / "MANIFEST.json").is_file()
    assert (first.path / "adapter" / "adapter_model.safetensors").is_file()
    lineage = json.loads((first.path / "lineage.json").read_text())
    assert lineage["adapter_digest"] and lineage["train"]["method"] == "no_dpo"
    assert "| rtr_toxic |" in (first.path / "model_card.md").read_text()
    assert R.register(reg, adapter, tmp_path / "ev.json", {}).version == "v2"
    pinned = reg.model_copy(update={"version": "v1"})
    with pytest.raises(OptimusError, match="already registered"):
        R.register(pinned, adapter, tmp_path / "ev.json", {})
    assert R.list_versions(str(tmp_path / "reg"), "m") == ["v1", "v2"]

    failed = {**ev, "gate": {"passed": False, "reasons": ["rtr_toxic = 1 > 0.1"]}}
    (tmp_path / "bad.json").write_text(json.dumps(failed))
    with pytest.raises(OptimusError, match="did not pass"):
        R.register(reg, adapter, tmp_path / "bad.json", {})
    rej = R.record_rejection(reg, tmp_path / "bad.json", {"run": "x"})
    assert json.loads((rej.path / "rejection.json").read_text())["gate"]["passed"] is False
    assert rej.record["gate"]["passed"] is False and rej.uri == rej.path.resolve().as_uri()
    assert R.list_versions(str(tmp_path / "reg"), "m") == ["v1", "v2"]


def test_register_bad_input_is_one_line(tmp_path):
    reg = R.RegisterSettings(uri=str(tmp_path / "reg"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(OptimusError, match="no .*safetensors"):
        R.register(reg, tmp_path / "empty", tmp_path / "ev.json", {})
    (tmp_path / "empty" / "adapter_model.safetensors").write_bytes(b"x")
    with pytest.raises(OptimusError, match="no such evaluation"):
        R.register(reg, tmp_path / "empty", tmp_path / "ev.json", {})
    with pytest.raises(OptimusError, match="scheme"):
        R.register(reg.model_copy(update={"uri": "s3://b/x"}), tmp_path / "empty",
                   tmp_path / "ev.json", {})  # fmt: skip
    with pytest.raises(OptimusError, match="name"):
        R.register(reg.model_copy(update={"name": "../up"}), tmp_path / "empty",
                   tmp_path / "ev.json", {})  # fmt: skip


def test_load_hf_dataset_from_a_local_dataset_folder(tmp_path):
    import datasets

    from optimus_lib.data.sources import load_hf_dataset

    rows = [{"context": ["hi"], "response": "hello", "label": "safe"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    (s,) = load_hf_dataset(f"hf:{tmp_path / 'ds'}")
    assert s.response == "hello" and s.label == 0


def test_embedding_similarity_with_the_packaged_minilm():
    from optimus_lib.evaluate.runner import embedding_similarity

    same = embedding_similarity(["I like dogs"], ["I like dogs"])
    diff = embedding_similarity(["I like dogs"], ["The invoice is overdue"])
    assert same == pytest.approx(1.0, abs=1e-4) and diff < same


def test_atomic_writes_have_ordinary_file_modes(tmp_path):
    import os
    import stat

    from optimus_lib.data.io import write_json

    write_json(tmp_path / "x.json", {"a": 1})
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o666 & ~mask
    assert not list(tmp_path.glob(".x.json.*"))  # no temp file left behind


def test_hub_models_must_be_pinned():
    from optimus_lib.models.specs import resolve_model

    with pytest.raises(OptimusError, match="pinned to a revision"):
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert resolve_model("org/name@0123abc") == ("org/name", "0123abc")


def test_prepare_data_takes_the_users_evaluation_sets(tmp_path):
    tox = tmp_path / "tox.jsonl"
    tox.write_text(
        "".join(json.dumps({"context": [f"you {i}"], "response": ""}) + "\n" for i in range(3))
    )
    ben = tmp_path / "ben.jsonl"
    ben.write_text(json.dumps({"context": ["hi"], "response": "hello"}) + "\n")
    s = D.DataSettings(n_train=8, eval_toxic_uri=str(tox), eval_benign_uri=str(ben), n_eval_toxic=2)
    res = D.prepare_data(s, tmp_path / "t.jsonl", tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    assert (res.n_eval_toxic, res.n_eval_benign) == (2, 1)
    assert [r["context"] for r in _rows(tmp_path / "a.jsonl")] == [["you 0"], ["you 1"]]
