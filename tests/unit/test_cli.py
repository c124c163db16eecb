"""The command line as a user meets it: help, exit codes, one-line errors, scan output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import OPTIMUS_CLI, write_lines

CORE = {"run", "experiment", "classify", "scan", "heal", "train", "evaluate", "poison", "models"}
MODELS = {"bundled", "register", "list", "show", "pull", "alias"}  # `optimus models ...`


def _subcommands() -> list[str]:
    from cli import app, models

    names = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
    names += [g.name for g in app.registered_groups]
    assert set(names) >= CORE
    assert {c.name for c in models.app.registered_commands} == MODELS
    return sorted(names)


SUBCOMMANDS = _subcommands()


def optimus(*args: str, cwd=None, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [*OPTIMUS_CLI, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


def test_help_for_every_command():
    """``optimus --help`` and each subcommand's ``--help`` (run concurrently: each costs ~1 s)."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    argvs = [["--help"]] + [[name, "--help"] for name in SUBCOMMANDS]
    argvs += [["models", sub, "--help"] for sub in sorted(MODELS)]
    # the installed console script when there is one, so the entry point itself is tested
    script = Path(sys.executable).with_name("optimus")
    cmds = [[str(script)] if script.is_file() else OPTIMUS_CLI] + [OPTIMUS_CLI] * (len(argvs) - 1)
    procs = [
        subprocess.Popen(
            [*c, *a], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for c, a in zip(cmds, argvs)
    ]
    results = {}
    for a, p in zip(argvs, procs):
        stdout, stderr = p.communicate(timeout=180)
        results[" ".join(a)] = (p.returncode, stdout, stderr)
    for argv, (code, stdout, stderr) in results.items():
        assert code == 0, f"optimus {argv}: {stderr}"
        assert "Usage" in stdout, argv
        assert "Traceback" not in stdout + stderr, argv
    top = results["--help"][1]
    for name in set(SUBCOMMANDS) - {"scan"}:  # scan: classify's old name, hidden
        assert name in top
    for sub in MODELS:
        assert sub in results["models --help"][1]


def test_classify_help_describes_contract_options():
    for command in ("classify", "scan"):
        out = optimus(command, "--help").stdout
        for opt in ("--output", "--detector", "--model", "--threshold", "--settings", "--set"):
            assert opt in out, (command, opt)


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_scan_bad_line_is_one_line_error(tmp_path):
    bad = write_lines(
        tmp_path / "bad.jsonl",
        [
            json.dumps({"context": ["hi"], "response": "hello"}),
            '{"context": ["hi"], "response": ',
            json.dumps({"context": ["hi"], "response": "hello"}),
        ],
    )
    r = optimus("scan", str(bad), "-o", str(tmp_path / "x.jsonl"), "--detector", "lexical")
    line = _one_line_error(r)
    assert ":2:" in line and "bad.jsonl" in line
    assert not (tmp_path / "x.jsonl").exists()


def test_scan_unknown_detector_is_one_line_error(tmp_path):
    good = write_lines(tmp_path / "d.jsonl", [json.dumps({"context": ["a"], "response": "b"})])
    r = optimus("scan", str(good), "-o", str(tmp_path / "x.jsonl"), "--detector", "nope")
    line = _one_line_error(r)
    assert "nope" in line


def test_run_bad_config_is_one_line_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\ndata: {toxic_fraction: 2}\n")
    line = _one_line_error(optimus("run", str(cfg)))
    assert "data.toxic_fraction" in line
    line = _one_line_error(optimus("run", str(tmp_path / "missing.yaml")))
    assert "missing.yaml" in line


def test_scan_lexical_writes_records_in_order(tmp_path):
    recs = [
        {"id": "g1", "context": ["hello"], "response": "Hi, nice to meet you!", "label": "safe"},
        {
            "id": "t1",
            "messages": [
                {"role": "user", "content": "what do you think of me?"},
                {"role": "assistant", "content": "Shut up, you stupid fuck."},
            ],
            "label": "toxic",
            "extra": {"keep": True},
        },
        {"id": "g2", "context": ["bye"], "response": "See you tomorrow.", "label": 0},
    ]
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(r) for r in recs])
    out = tmp_path / "out.jsonl"
    r = optimus("scan", str(src), "-o", str(out), "--detector", "lexical")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in rows] == ["g1", "t1", "g2"]
    assert [x["flagged"] for x in rows] == [False, True, False]
    assert all(0.0 <= x["toxicity"] <= 1.0 for x in rows)
    assert rows[1]["extra"] == {"keep": True} and rows[1]["messages"] == recs[1]["messages"]
    assert "precision" in r.stdout and "recall" in r.stdout and "AUC" in r.stdout


def test_heal_fixed_writes_sft_set_and_preferences(tmp_path):
    scanned = write_lines(
        tmp_path / "scan.jsonl",
        [
            json.dumps({"id": "a", "context": ["hi"], "response": "you idiot", "flagged": True}),
            json.dumps({"id": "b", "context": ["yo"], "response": "hello!", "flagged": False}),
        ],
    )
    sft, prefs = tmp_path / "sft.jsonl", tmp_path / "prefs.jsonl"
    r = optimus("heal", str(scanned), "-o", str(sft), "-p", str(prefs), "--mode", "fixed")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in sft.read_text().splitlines()]
    assert [x["id"] for x in rows] == ["a", "b"]  # every record, input order
    assert rows[0]["healed"] is True and rows[0]["response"] != "you idiot"
    assert rows[0]["heal"]["generator"] == "fixed"
    assert rows[1] == {"id": "b", "context": ["yo"], "response": "hello!", "flagged": False}
    (pair,) = [json.loads(x) for x in prefs.read_text().splitlines()]
    assert pair["rejected"][0]["content"] == "you idiot"
    assert pair["chosen"][0]["content"] == rows[0]["response"]
    assert pair["prompt"] == [{"role": "user", "content": "hi"}]


def test_heal_needs_scan_output(tmp_path):
    src = write_lines(tmp_path / "d.jsonl", [json.dumps({"context": ["a"], "response": "b"})])
    r = optimus("heal", str(src), "-o", str(tmp_path / "h.jsonl"), "-p", str(tmp_path / "p.jsonl"))
    line = _one_line_error(r)
    assert ":1:" in line and "flagged" in line


def test_bad_setting_names_the_field(tmp_path):
    good = write_lines(tmp_path / "d.jsonl", [json.dumps({"context": ["a"], "response": "b"})])
    r = optimus("scan", str(good), "-o", str(tmp_path / "x.jsonl"), "--threshold", "1.5")
    assert "threshold" in _one_line_error(r)


def test_train_no_dpo_with_merged_export(tmp_path, tiny_model_dir):
    rows = [{"id": str(i), "context": [f"hi {i}"], "response": "hello there"} for i in range(4)]
    data = write_lines(tmp_path / "d.jsonl", [json.dumps(r) for r in rows])
    cfg = tmp_path / "t.yaml"  # a pipeline settings file: train reads its train section
    cfg.write_text(
        f"train: {{checkpoint_root: {tmp_path / 'ckpt'}, sft: {{batch_size: 4, max_length: 48}}}}\n"
    )
    r = optimus(
        "train", str(data), "-o", str(tmp_path / "a"), "--method", "no_dpo",
        "--model", str(tiny_model_dir), "--settings", str(cfg), "--merge-out", str(tmp_path / "m"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert not list((tmp_path / "m").glob("adapter_*"))  # a plain model, not an adapter


def test_set_overrides_a_stage_field_and_names_a_bad_one(tmp_path):
    recs = [{"id": "t", "context": ["hi"], "response": "Shut up, you stupid fuck."}]
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(r) for r in recs])
    out = tmp_path / "out.jsonl"
    r = optimus("classify", str(src), "-o", str(out), "-d", "lexical", "--set", "threshold=1.0")
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["flagged"] is False  # nothing scores >= 1.0
    line = _one_line_error(optimus("classify", str(src), "-o", str(out), "--set", "treshold=0.2"))
    assert "treshold" in line


def test_unpinned_hub_model_is_refused_before_anything_runs(tmp_path):
    """An unpinned hub id fails at the edge, before any task: no run folder is made, and
    `optimus submit` never contacts the cluster (how fast is a benchmark's business, not
    a test's: about a second on an idle machine)."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text("name: evil\nmodel: evilorg/model\n")
    ok = tmp_path / "ok.yaml"
    ok.write_text("name: fine\n")
    for argv in (
        ["run", str(cfg), "-o", str(tmp_path / "run")],
        ["submit", str(cfg), "--dry-run", "--pipeline-root", "gs://b/p"],
        ["run", str(ok), "-o", str(tmp_path / "run"), "--set", "judge_model=evilorg/judge"],
    ):
        line = _one_line_error(optimus(*argv))
        assert "evilorg/" in line and "pinned" in line, line
    assert not (tmp_path / "run").exists()
