"""The whole pipeline on the tiny model: artifacts, metrics, and resume without recompute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optimus_lib.config import RunConfig
from optimus_lib.errors import OptimusError
from optimus_lib.pipeline import METHOD_PLAN, run_pipeline, training_sets


def _cfg(model: Path, **over) -> RunConfig:
    raw = {
        "name": "tiny",
        "seed": 0,
        "model": str(model),
        "device": "cpu",
        "methods": ["no_defense", "optimus"],
        "data": {"n_train": 8, "toxic_fraction": 0.25, "n_eval_toxic": 2, "n_eval_benign": 2},
        "scan": {"detector": "lexical", "batch_size": 8},
        "heal": {"max_new_tokens": 8, "retries": 0},
        "train": {
            "sft": {"epochs": 1, "batch_size": 4, "max_length": 64, "lora": {"r": 4}},
            "dpo": {"epochs": 1, "batch_size": 2, "max_length": 64, "lora": {"r": 4}},
        },
        "evaluate": {"max_new_tokens": 6, "similarity": False},
    }
    for k, v in over.items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) else v
    return RunConfig.model_validate(raw)


ARTIFACTS = [
    "config.yaml",
    "stages.json",
    "data/train.jsonl",
    "data/eval_toxic.jsonl",
    "data/eval_benign.jsonl",
    "scan.jsonl",
    "heal.jsonl",
    "train/sft-all/adapter/adapter_model.safetensors",
    "train/sft-healed/adapter/adapter_model.safetensors",
    "train/dpo-healed/adapter/adapter_model.safetensors",
    "eval/no_defense.json",
    "eval/optimus.json",
    "metrics.json",
    "report.html",
]


def _mtimes(run_dir: Path) -> dict[str, int]:
    return {
        str(p.relative_to(run_dir)): p.stat().st_mtime_ns
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name not in ("config.yaml", "metrics.json", "report.html")
    }


@pytest.fixture(scope="module")
def first_run(tiny_model_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = _cfg(tiny_model_dir)
    metrics = run_pipeline(cfg, run_dir, progress=False)
    return cfg, run_dir, metrics


def test_artifacts_exist(first_run):
    _, run_dir, _ = first_run
    missing = [a for a in ARTIFACTS if not (run_dir / a).is_file()]
    assert not missing


def test_metrics_shape(first_run):
    _, run_dir, metrics = first_run
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["methods"].keys() == {"no_defense", "optimus"}
    for m in on_disk["methods"].values():
        for key in ("rtr_toxic", "rtr_benign", "perplexity", "over_refusal", "distinct_2"):
            assert key in m
        assert 0.0 <= m["rtr_toxic"] <= 1.0 and 0.0 <= m["rtr_benign"] <= 1.0
        assert m["perplexity"] > 1.0
    det = on_disk["detector"]
    assert det["name"] == "lexical" and det["n"] == 8 and det["n_toxic"] == 2
    assert on_disk["healing"]["healed"] == det["flagged"]
    assert "scan" in on_disk["timings"] and "total" in on_disk["timings"]
    assert metrics["methods"] == on_disk["methods"]


def test_scan_and_heal_records(first_run):
    _, run_dir, _ = first_run
    train = [json.loads(x) for x in (run_dir / "data/train.jsonl").read_text().splitlines()]
    scan = [json.loads(x) for x in (run_dir / "scan.jsonl").read_text().splitlines()]
    assert [r["id"] for r in scan] == [r["id"] for r in train]  # input order kept
    assert all(isinstance(r["toxicity"], float) and isinstance(r["flagged"], bool) for r in scan)
    assert all(r["poisoned"] in (True, False) for r in scan)  # unknown keys carried through
    assert sum(r["label"] == "toxic" for r in scan) == 2
    heal = [json.loads(x) for x in (run_dir / "heal.jsonl").read_text().splitlines()]
    assert [h["id"] for h in heal] == [r["id"] for r in scan if r["flagged"]]
    for h in heal:
        assert h["healed"] and h["heal"]["attempts"] >= 1
        assert h["heal"]["prompt_version"] and "generator" in h["heal"]


def test_report_html(first_run):
    _, run_dir, _ = first_run
    page = (run_dir / "report.html").read_text()
    assert page.startswith("<!doctype html>")
    assert "no_defense" in page and "optimus" in page
    assert "data:image/png;base64," in page
    assert "<script" not in page


def test_training_sets_follow_method_plan(first_run):
    _, run_dir, _ = first_run
    run = type("R", (), {"cfg": first_run[0]})()
    scan, heal = run_dir / "scan.jsonl", run_dir / "heal.jsonl"
    flagged = sum(json.loads(x)["flagged"] for x in scan.read_text().splitlines())
    assert flagged >= 1
    all_, _ = training_sets(run, scan, heal, "all")
    kept, _ = training_sets(run, scan, heal, "filtered")
    healed, pairs = training_sets(run, scan, heal, "healed")
    fixed, fpairs = training_sets(run, scan, heal, "fixed")
    assert len(all_) == len(healed) == len(fixed) == 8
    assert len(kept) == 8 - flagged
    assert len(pairs) == len(fpairs) == flagged
    heal_recs = [json.loads(x) for x in heal.read_text().splitlines()]
    assert [h for _, h in pairs] == [r["healed"] for r in heal_recs]
    assert all(s.response != h for s, h in pairs)  # rejected = original flagged reply
    assert {h for _, h in fpairs} == {first_run[0].heal.fixed_reply}
    with pytest.raises(OptimusError):
        training_sets(run, scan, None, "healed")
    assert set(METHOD_PLAN) >= {"no_defense", "filter", "fixed_heal", "no_dpo", "optimus"}


def test_rerun_skips_every_stage(first_run):
    cfg, run_dir, _ = first_run
    stages_before = (run_dir / "stages.json").read_text()
    mtimes_before = _mtimes(run_dir)
    metrics = run_pipeline(cfg, run_dir, progress=False)
    assert set(metrics["timings"]) == {"total"}  # no stage ran
    assert (run_dir / "stages.json").read_text() == stages_before
    assert _mtimes(run_dir) == mtimes_before
    assert json.loads(stages_before).keys() >= {
        "data",
        "scan",
        "heal",
        "train/sft-all",
        "train/sft-healed",
        "train/dpo-healed",
        "evaluate/no_defense",
        "evaluate/optimus",
    }


def test_changed_setting_recomputes_only_downstream(first_run, tiny_model_dir):
    cfg, run_dir, _ = first_run
    changed = _cfg(tiny_model_dir, evaluate={"max_new_tokens": 4, "similarity": False})
    before = _mtimes(run_dir)
    metrics = run_pipeline(changed, run_dir, progress=False)
    assert set(metrics["timings"]) == {"total", "evaluate/no_defense", "evaluate/optimus"}
    after = _mtimes(run_dir)
    assert after["scan.jsonl"] == before["scan.jsonl"]
    assert (
        after["train/dpo-healed/adapter/adapter_model.safetensors"]
        == (before["train/dpo-healed/adapter/adapter_model.safetensors"])
    )
    assert after["eval/optimus.json"] != before["eval/optimus.json"]


def test_interrupted_stage_is_redone(first_run):
    cfg, run_dir, _ = first_run
    (run_dir / "heal.jsonl").unlink()  # as if the run died during healing
    metrics = run_pipeline(cfg, run_dir, progress=False)
    assert "heal" in metrics["timings"]
    assert "scan" not in metrics["timings"]
    assert (run_dir / "heal.jsonl").is_file()


def test_user_ids_that_look_builtin(tmp_path, tiny_model_dir):
    from optimus_lib.pipeline import Run, stage_data

    train = tmp_path / "train.jsonl"
    train.write_text(
        "\n".join(
            json.dumps({"id": f"chitchat-user{i}", "context": ["hi"], "response": "ok"})
            for i in range(4)
        )
        + "\n"
    )
    cfg = _cfg(tiny_model_dir, data={"train": str(train), "n_train": 4})
    paths = stage_data(Run(cfg, tmp_path / "run", progress=False))
    assert paths["train"].is_file()
