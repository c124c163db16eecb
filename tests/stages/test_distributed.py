"""Data-parallel scan under `accelerate launch` equals the single-process output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # several processes (accelerate launch)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _dataset(path: Path) -> None:
    rows = [
        {"id": i, "context": [f"hello number {i}"], "response": r, "label": lab, "extra": i}
        for i, (r, lab) in enumerate(
            [
                ("you are a fucking idiot", "toxic"),
                ("nice to meet you", "safe"),
                ("shut up, bitch", "toxic"),
                ("I love hiking", "safe"),
                ("what a lovely day", "safe"),
                ("go to hell, asshole", "toxic"),
                ("see you tomorrow", "safe"),
            ]
        )
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_scan_two_processes_matches_one(tmp_path):
    data = tmp_path / "data.jsonl"
    _dataset(data)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    single = tmp_path / "single.jsonl"
    multi = tmp_path / "multi.jsonl"
    subprocess.run(
        [
            str(BIN / "optimus"),
            "scan",
            str(data),
            "-o",
            str(single),
            "--detector",
            "wordlist+lexical",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    proc = subprocess.run(
        [
            str(BIN / "accelerate"),
            "launch",
            "--config_file",
            str(ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"),
            "-m",
            "cli",
            "scan",
            str(data),
            "-o",
            str(multi),
            "--detector",
            "wordlist+lexical",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert multi.read_text() == single.read_text()
    assert len(multi.read_text().splitlines()) == 7
    assert not list(tmp_path.glob(".multi.jsonl.*"))  # shard files cleaned up


def test_sharded_map_resumes_from_existing_shard(tmp_path):
    from optimus_lib.distributed import sharded_map

    calls = []

    def fn(xs):
        calls.append(list(xs))
        return [x * 2 for x in xs]

    out = tmp_path / "o.jsonl"
    shard = tmp_path / ".o.jsonl.k.0of1.jsonl"
    shard.write_text("".join(json.dumps({"r": v}) + "\n" for v in [10, 20, 30]))
    assert sharded_map([1, 2, 3], fn, out, "k") == [10, 20, 30]  # reused, not recomputed
    assert calls == []
    assert sharded_map([1, 2, 3], fn, out, "k") == [2, 4, 6]
    assert calls == [[1, 2, 3]]
