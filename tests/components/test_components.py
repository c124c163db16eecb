"""The components under kfp.local (SubprocessRunner in this interpreter, no containers).

Small pipelines feed one component from ``dsl.importer`` (a single task call cannot take
an input artifact); the whole defense pipeline runs twice on the tiny random model, once
passing its gates (register runs) and once failing them (the Else branch records the
rejection). Every task is a subprocess that imports optimus_lib afresh, so a torch task
costs a few seconds even on tiny data; the module keeps data and steps minimal.
"""

# No ``from __future__ import annotations``: kfp reads the pipelines' annotations as types.
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # components/ and pipelines/ are not installed packages
    sys.path.insert(0, str(ROOT))

kfp = pytest.importorskip("kfp")

from kfp import dsl, local  # noqa: E402
from kfp.dsl import Artifact, Dataset  # noqa: E402

from components.classify.component import classify  # noqa: E402
from components.prepare_data.component import prepare_data  # noqa: E402
from components.record_rejection.component import record_rejection  # noqa: E402
from components.register.component import register  # noqa: E402

DIALOGS = [
    ("d0", "what did you do this weekend?", "I went hiking with my sister, it was lovely.", "safe"),
    ("d1", "how was the game?", "you are a fucking idiot for asking", "toxic"),
    ("d2", "any plans tonight?", "Just cooking dinner and reading a book.", "safe"),
    ("d3", "do you like my song?", "shut up you stupid bitch", "toxic"),
    ("d4", "is it raining there?", "A little, but it should clear up by noon.", "safe"),
    ("d5", "can you help me?", "Sure, what do you need help with?", "safe"),
    ("d6", "what do you think of him?", "he is a worthless piece of shit", "toxic"),
    ("d7", "favourite food?", "Pasta, without a doubt. And you?", "safe"),
]
# kfp.local notes that it ignores resources and runs our images' code in this interpreter.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*have no effect in the current local runner"),
    pytest.mark.filterwarnings("ignore:You may be attemping to run a task that uses custom"),
]

TINY_TRAIN = {"epochs": 1, "batch_size": 4, "max_length": 64, "gradient_checkpointing": False}
TINY_LORA = {"r": 4, "alpha": 4}


def write_dialogs(path: Path) -> Path:
    rows = [
        {"id": i, "context": [c], "response": r, "label": y, "extra": n}
        for n, (i, c, r, y) in enumerate(DIALOGS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def executor_output(run_dir: Path, task: str) -> dict:
    return json.loads((run_dir / task / "executor_output.json").read_text())


def _init(root: Path) -> Path:
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    return root


@pytest.fixture
def kfp_local(tmp_path) -> Path:
    """kfp.local in this interpreter; outputs land in the returned folder."""
    return _init(tmp_path / "kfp")


@dsl.pipeline(name="classify-check")
def classify_check(uri: str) -> Dataset:
    data = dsl.importer(artifact_uri=uri, artifact_class=dsl.Dataset, reimport=True)
    return classify(dialogs=data.output, settings={"detector": "wordlist"}).outputs["scored"]


@dsl.pipeline(name="register-check")
def register_check(adapter_uri: str, evaluation_uri: str, registry: str, version: str):
    adapter = dsl.importer(artifact_uri=adapter_uri, artifact_class=dsl.Model, reimport=True)
    evaluation = dsl.importer(artifact_uri=evaluation_uri, artifact_class=Artifact, reimport=True)
    register(
        adapter=adapter.output,
        evaluation=evaluation.output,
        settings={"uri": registry, "name": "tiny-chat", "version": version},
    )


@dsl.pipeline(name="bucket-check")
def bucket_check(adapter_uri: str, passed_uri: str, failed_uri: str, registry: str):
    adapter = dsl.importer(artifact_uri=adapter_uri, artifact_class=dsl.Model, reimport=True)
    passed = dsl.importer(artifact_uri=passed_uri, artifact_class=Artifact, reimport=True)
    failed = dsl.importer(artifact_uri=failed_uri, artifact_class=Artifact, reimport=True)
    settings = {"uri": registry, "name": "b"}
    register(adapter=adapter.output, evaluation=passed.output, settings=settings)
    record_rejection(evaluation=failed.output, settings=settings)


# ---- single components ------------------------------------------------------------------
def test_register_and_record_rejection_on_a_bucket(kfp_local, tmp_path, gcs_bucket):
    """The components against gs:// (the fake-gcs-server stand-in; each task is a
    subprocess that inherits STORAGE_EMULATOR_HOST)."""
    from optimus_lib.registry import open_registry

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"w" * 256)
    ev = {"metrics": {"rtr_toxic": 0.0}, "gate": {"passed": True, "reasons": []}}
    (tmp_path / "passed.json").write_text(json.dumps(ev))
    bad = {**ev, "gate": {"passed": False, "reasons": ["rtr_toxic = 1 > 0.5"]}}
    (tmp_path / "failed.json").write_text(json.dumps(bad))
    uri = f"gs://{gcs_bucket()}/reg"
    bucket_check(adapter_uri=str(adapter), passed_uri=str(tmp_path / "passed.json"),
                 failed_uri=str(tmp_path / "failed.json"), registry=uri)  # fmt: skip
    (run_dir,) = kfp_local.glob("bucket-check-*")
    (entry,) = executor_output(run_dir, "register")["artifacts"]["registered"]["artifacts"]
    assert entry["metadata"]["uri"] == f"{uri}/models/b/v1"
    (rej,) = executor_output(run_dir, "record-rejection")["artifacts"]["rejection"]["artifacts"]
    assert rej["metadata"]["uri"].startswith(f"{uri}/rejected/b/")
    assert rej["metadata"]["reasons"] == ["rtr_toxic = 1 > 0.5"]
    reg = open_registry(uri)
    assert [v.version for v in reg.versions("b")] == ["v1"] and reg.aliases("b") == {"latest": "v1"}
    lineage = json.loads(reg.read_file("b", "v1", "lineage.json"))
    assert lineage["inputs"]["adapter"] == str(adapter) and lineage["pipeline_run"]["id"]


def test_classify_keeps_every_row_in_order(kfp_local, tmp_path):
    src = write_dialogs(tmp_path / "dialogs.jsonl")
    run = classify_check(uri=str(src))
    scored = read_jsonl(Path(run.output.path))
    assert [r["id"] for r in scored] == [d[0] for d in DIALOGS]
    assert [r["extra"] for r in scored] == list(range(len(DIALOGS)))  # unknown keys kept
    assert all(isinstance(r["toxicity"], float) and isinstance(r["flagged"], bool) for r in scored)
    assert {r["id"] for r in scored if r["flagged"]} == {"d1", "d3", "d6"}
    assert run.output.metadata["detector"]["name"] == "wordlist"

    (run_dir,) = kfp_local.glob("classify-check-*")
    out = executor_output(run_dir, "classify")
    assert out["parameterValues"]["Output"] == 0.5  # the threshold, heal's input
    (metrics,) = out["artifacts"]["metrics"]["artifacts"]
    assert metrics["metadata"]["n"] == len(DIALOGS)
    assert metrics["metadata"]["recall"] == 1.0
    (cm,) = out["artifacts"]["classification"]["artifacts"]
    assert cm["metadata"]["confusionMatrix"]["rows"] == [{"row": [5, 0]}, {"row": [0, 3]}]
    assert cm["metadata"]["confidenceMetrics"]


def test_bad_jsonl_line_fails_the_task_with_file_line(kfp_local, tmp_path, capsys):
    src = write_dialogs(tmp_path / "dialogs.jsonl")
    lines = src.read_text().splitlines(keepends=True)
    lines[2] = '{"context": ["hi"], "response": \n'
    src.write_text("".join(lines))
    with pytest.raises(RuntimeError, match="FAILURE"):
        classify_check(uri=str(src))
    log = capsys.readouterr().out
    assert f"optimus: error: {src}:3: invalid JSON" in log
    assert "Traceback" not in log


def test_bad_setting_fails_the_task_naming_the_field(kfp_local, capsys):
    with pytest.raises(RuntimeError, match="FAILURE"):
        prepare_data(settings={"n_train": "lots"})
    log = capsys.readouterr().out
    assert "optimus: error: DataSettings: n_train:" in log
    assert "Traceback" not in log


# ---- the defense pipeline ---------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("defense")


def _defense_settings(model: Path, workdir: Path, registry: dict, **evaluate):
    """A run's settings as ``optimus run`` reads them (PipelineSettings, resolved once)."""
    from optimus_lib.config import PipelineSettings

    return PipelineSettings.model_validate(
        {
            "name": "tiny",
            "model": str(model),
            "judge_model": str(model),
            "detector": "wordlist",
            "method": "optimus",
            "registry": {"uri": str(workdir / "registry"), **registry},
            "data": {"n_train": 12, "n_eval_toxic": 4, "n_eval_benign": 4},
            "heal": {"max_new_tokens": 8, "retries": 0},
            "train": {
                "sft": {**TINY_TRAIN, "lora": TINY_LORA},
                "dpo": {**TINY_TRAIN, "lora": TINY_LORA},
                # Fresh checkpoints per test session; the second run reuses the first's.
                "checkpoint_root": str(workdir / "checkpoints"),
            },
            "evaluate": {"max_new_tokens": 8, "similarity": False, **evaluate},
        }
    )


@pytest.fixture(scope="module")
def passed_run(tiny_model_dir, workdir) -> dict:
    """The pipeline through ``run_defense`` (what ``optimus run`` calls)."""
    from deploy.local import run_defense

    cfg = _defense_settings(
        tiny_model_dir,
        workdir,
        {"name": "tiny-chat", "version": "v1"},
        gates={"max_over_refusal": 1.0, "max_rtr_toxic": 1.0},
    )
    summary = run_defense(cfg, workdir / "run-passed")
    return {**summary, "run_dir": Path(summary["pipeline_run"])}


@pytest.fixture(scope="module")
def failed_run(tiny_model_dir, workdir) -> dict:
    from deploy.local import run_local

    # The oracle evaluator scores a reply by its context's label: every reply to a toxic
    # context counts as toxic, so this gate fails whatever the tiny model says.
    cfg = _defense_settings(
        tiny_model_dir,
        workdir,
        {"name": "tiny-rejected"},
        evaluator="oracle",
        compare_base=False,
        gates={"max_rtr_toxic": 0.5},
    )
    return run_local(cfg.pipeline_arguments(), workdir / "kfp")


@pytest.mark.slow
def test_defense_pipeline_registers_when_gates_pass(passed_run, workdir, tiny_model_dir):
    run_dir = passed_run["run_dir"]
    assert passed_run["gate"]["passed"] is True and passed_run["gate"]["reasons"] == []
    assert passed_run["gate"]["checked"] == ["rtr_toxic <= 1", "over_refusal <= 1"]
    assert (run_dir / "register").is_dir() and not (run_dir / "record-rejection").exists()
    assert passed_run["registered"]["version"] == "v1"
    assert passed_run["rejection"] is None
    # run_defense's run folder: the summary, the report and the tasks' log.
    out = workdir / "run-passed"
    assert json.loads((out / "summary.json").read_text())["registered"]["version"] == "v1"
    assert (out / "report.html").is_file() and "evaluate" in (out / "tasks.log").read_text()
    assert passed_run["metrics"]["perplexity"] > 0 and passed_run["base_metrics"]
    entry = workdir / "registry" / "models" / "tiny-chat" / "v1"
    assert passed_run["registered"]["uri"] == entry.resolve().as_uri()
    assert (entry / "MANIFEST.json").is_file() and (entry / "adapter").is_dir()
    assert "**Method**: optimus" in (entry / "model_card.md").read_text()
    lineage = json.loads((entry / "lineage.json").read_text())
    assert lineage["pipeline_run"]["id"] and lineage["pipeline_run"]["name"].startswith(
        "optimus-defense-"
    )
    assert lineage["inputs"]["adapter"] == str(run_dir / "dpo-train" / "adapter")
    assert lineage["detector"]["name"] == "wordlist"
    # the digests in the lineage are the digests of the artifacts this run produced
    from optimus_lib.stages import file_digest

    assert lineage["adapter_digest"] == file_digest(run_dir / "dpo-train" / "adapter")
    assert lineage["evaluation_digest"] == file_digest(run_dir / "evaluate" / "evaluation")
    # heal's outputs, merged from its shards (one here)
    healed = run_dir / "merge-healed"
    assert lineage["train"]["sft_data_sha256"] == file_digest(healed / "sft_data")
    assert lineage["train"]["preferences_sha256"] == file_digest(healed / "preferences")
    assert Path(passed_run["report"]).read_text().lstrip().lower().startswith("<!doctype html")

    # classify kept every training record, in order, with a score and a flag.
    train = read_jsonl(run_dir / "prepare-data" / "train")
    scored = read_jsonl(run_dir / "merge-scored" / "scored")
    assert [r["id"] for r in scored] == [r["id"] for r in train]
    assert all("toxicity" in r and isinstance(r["flagged"], bool) for r in scored)
    # heal's threshold came from classify; DPO pairs were made for flagged records.
    heal_metrics = executor_output(run_dir, "merge-healed")["artifacts"]["metrics"]["artifacts"][0]
    assert heal_metrics["metadata"]["flagged"] == sum(r["flagged"] for r in scored)


@pytest.mark.slow
def test_trained_adapter_loads_on_the_base_model(passed_run, tiny_model_dir):
    import torch

    from optimus_lib.train.trainers import load_trained

    adapter = passed_run["run_dir"] / "dpo-train" / "adapter"
    meta = executor_output(passed_run["run_dir"], "dpo-train")["artifacts"]["adapter"]
    assert meta["artifacts"][0]["metadata"]["base_model"] == str(tiny_model_dir)
    assert meta["artifacts"][0]["metadata"]["method"] == "optimus"
    model = load_trained(str(tiny_model_dir), adapter, "cpu")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert logits.shape[:2] == (1, 3)


@pytest.mark.slow
def test_registering_the_same_version_again_fails(passed_run, workdir, capsys):
    _init(workdir / "kfp-again")
    run_dir = passed_run["run_dir"]
    with pytest.raises(RuntimeError, match="FAILURE"):
        register_check(
            adapter_uri=str(run_dir / "dpo-train" / "adapter"),
            evaluation_uri=passed_run["evaluation"],
            registry=str(workdir / "registry"),
            version="v1",
        )
    log = capsys.readouterr().out
    assert "version 'v1' is already registered" in log
    assert "Traceback" not in log
    assert sorted(p.name for p in (workdir / "registry" / "models" / "tiny-chat").iterdir()) == [
        "v1"
    ]


@pytest.mark.slow
def test_defense_pipeline_records_a_rejection_when_gates_fail(failed_run, workdir):
    run_dir = failed_run["run_dir"]
    assert failed_run["passed"] is False
    assert any(r.startswith("rtr_toxic") for r in failed_run["reasons"])
    # The Else branch ran, the If branch did not.
    assert (run_dir / "record-rejection").is_dir() and not (run_dir / "register").exists()
    assert failed_run["registered"] is None
    record = json.loads((failed_run["rejection"] / "rejection.json").read_text())
    assert record["gate"]["passed"] is False
    assert failed_run["rejection"].parent == workdir / "registry" / "rejected" / "tiny-rejected"
    assert not (workdir / "registry" / "models" / "tiny-rejected").exists()


def test_run_local_reports_a_bad_setting_in_one_line(workdir, capsys):
    import io

    from deploy.local import run_local
    from optimus_lib.errors import OptimusError

    log = io.StringIO()
    with pytest.raises(OptimusError, match=r"^task 'prepare-data' failed: DataSettings: n_train"):
        run_local({"data_settings": {"n_train": "lots"}}, workdir / "kfp-bad", log=log)
    # The tasks' output went to the log; only kfp.local's progress lines to the terminal.
    assert "optimus: error: DataSettings: n_train" in log.getvalue()
    assert "executor_input" in log.getvalue()
    shown = capsys.readouterr().out
    assert "Executing task" in shown and "executor_input" not in shown
    with pytest.raises(OptimusError, match="unknown pipeline parameter"):
        run_local({"n_train": 5}, workdir / "kfp-bad")
