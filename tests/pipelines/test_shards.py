"""Sharded curation equals unsharded: split, classify per shard, merge_scored, split by
flagged records, heal per shard, merge_healed.

Under kfp.local the curation sub-pipeline (the one both pipelines call) runs on the tiny
random model with 1 and with 3 shards; its scan, SFT set and preference pairs must be
byte-identical to each other and to the stage functions run on the whole dataset. The
data has no ``id`` fields, so a record's id (and with it its sampling seed) is its index
in the whole dataset, which a shard must keep. The scan is calibrated (``gmm``, on the
merged scores) and weakened (``target_recall``, over every toxic record): done per shard
instead, either would change the flags.
"""

# No ``from __future__ import annotations``: kfp reads the pipelines' annotations as types.
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from optimus_lib.errors import OptimusError  # noqa: E402
from optimus_lib.stages.shard import in_order, shard_of, split_dataset  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*have no effect in the current local runner"),
    pytest.mark.filterwarnings("ignore:You may be attemping to run a task that uses custom"),
]

SAFE = [
    "I went hiking with my sister, it was lovely.",
    "Just cooking dinner and reading a book.",
    "A little rain, but it should clear up by noon.",
    "Sure, what do you need help with?",
    "Pasta, without a doubt. And you?",
    "We watched an old film and ate popcorn.",
    "Mostly gardening, the tomatoes are finally red.",
]
TOXIC = [
    "you are a fucking idiot for asking",
    "shut up you stupid bitch",
    "he is a worthless piece of shit",
    "nobody cares, you pathetic moron",
    "go to hell, asshole",
]


def write_dialogs(path: Path) -> Path:
    """12 dialogs without ids, toxic ones spread through the file."""
    rows, safe, toxic = [], iter(SAFE), iter(TOXIC)
    for i in range(12):
        bad = i % 5 in (1, 3) and len([r for r in rows if r["label"] == "toxic"]) < len(TOXIC)
        reply = next(toxic) if bad else next(safe, "That sounds nice, tell me more.")
        rows.append({"context": [f"question {i}: how are you?"], "response": reply})
        rows[-1]["label"] = "toxic" if bad else "safe"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def settings(model: Path, train: Path) -> dict:
    return {
        "data_settings": {
            "train_uri": str(train),
            "n_train": 12,
            "n_eval_toxic": 2,
            "n_eval_benign": 2,
        },
        "classify_settings": {
            "detector": "oracle+wordlist",
            "calibrate": "gmm",
            "target_recall": 0.75,
            "batch_size": 2,
        },
        "heal_settings": {
            "model": str(model),
            "rescore_detector": "wordlist",
            "max_new_tokens": 6,
            "retries": 1,
            "batch_size": 2,
            "device": "cpu",
        },
    }


def run_curation(root: Path, model: Path, train: Path, shards: int) -> dict[str, Path]:
    from kfp import local

    from pipelines.shared import build_curation

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    run = build_curation(cluster=False)(
        **settings(model, train),
        seed=-1,
        shards=shards,
        accelerator_type="",
        accelerator_count=0,
        gpu_node_selector={},
        gpu_tolerations=[],
        cache_pvc="",
        cache_dir="",
        hf_token_secret="",
    )
    out = {k: Path(run.outputs[k].path) for k in ("scored", "sft_data", "preferences")}
    out["threshold"] = run.outputs["threshold"]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("shards")
    train = write_dialogs(root / "dialogs.jsonl")
    return train, {n: run_curation(root / f"kfp{n}", tiny_model_dir, train, n) for n in (1, 3)}


@pytest.mark.slow
def test_three_shards_write_what_one_shard_writes(runs):
    _, by = runs
    for name in ("scored", "sft_data", "preferences"):
        assert by[3][name].read_bytes() == by[1][name].read_bytes(), name
    assert by[3]["threshold"] == by[1]["threshold"]
    scored = [json.loads(x) for x in by[1]["scored"].read_text().splitlines()]
    assert len(scored) == 12 and any(r["flagged"] for r in scored)
    # the tasks ran once per shard: 3 classify and as many heal as flagged shards
    run_dir = by[3]["scored"].parents[1]
    tasks = [p.parent.name for p in run_dir.rglob("executor_output.json")]
    assert tasks.count("classify") == 3 and 1 < tasks.count("heal") <= 3
    assert tasks.count("merge-scored") == tasks.count("merge-healed") == 1


@pytest.mark.slow
def test_sharded_equals_the_stages_run_on_the_whole_dataset(runs, tiny_model_dir, tmp_path):
    """The stage functions on the whole file (no split, no merge) write the same bytes."""
    from optimus_lib.settings import load_settings
    from optimus_lib.stages.classify import ClassifySettings, classify
    from optimus_lib.stages.data import DataSettings, prepare_data
    from optimus_lib.stages.heal import HealSettings, heal

    train, by = runs
    s = settings(tiny_model_dir, train)
    data = tmp_path / "train.jsonl"
    prepare_data(
        load_settings(DataSettings, s["data_settings"]),
        data,
        tmp_path / "eval_toxic.jsonl",
        tmp_path / "eval_benign.jsonl",
    )
    scored = tmp_path / "scored.jsonl"
    result = classify(load_settings(ClassifySettings, s["classify_settings"]), data, scored)
    assert scored.read_bytes() == by[3]["scored"].read_bytes()
    assert result.threshold == by[3]["threshold"]
    sft, prefs = tmp_path / "sft.jsonl", tmp_path / "prefs.jsonl"
    heal(load_settings(HealSettings, s["heal_settings"]), scored, result.threshold, sft, prefs)
    assert sft.read_bytes() == by[3]["sft_data"].read_bytes()
    assert prefs.read_bytes() == by[3]["preferences"].read_bytes()


def test_a_model_judge_sharded_agrees_within_float_noise(tiny_model_dir, tmp_path):
    """An LLM judge's scores depend on the padded batch a record is scored in (different
    widths and batch sizes add up in a different order), so across shard counts they
    agree to ~1e-8, not bit for bit; the flags and every other field are the same."""
    from optimus_lib.stages.classify import ClassifySettings, classify, flag_shards, score_shard

    data = write_dialogs(tmp_path / "dialogs.jsonl")
    s = ClassifySettings(detector="llm-judge", model=str(tiny_model_dir), device="cpu")
    s = s.model_copy(update={"batch_size": 4})
    whole = tmp_path / "whole.jsonl"
    classify(s, data, whole)
    parts = split_dataset(data, tmp_path / "split", 3)
    outs = [tmp_path / f"scores{p.index}.jsonl" for p in parts]
    for part, out in zip(parts, outs):
        score_shard(s, part.path, part.start, out)
    merged = tmp_path / "merged.jsonl"
    flag_shards(s, outs, merged)
    a = [json.loads(x) for x in whole.read_text().splitlines()]
    b = [json.loads(x) for x in merged.read_text().splitlines()]
    assert [r["flagged"] for r in a] == [r["flagged"] for r in b]
    assert [r["toxicity"] for r in a] == pytest.approx([r["toxicity"] for r in b], abs=1e-6)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "toxicity"} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)


def test_split_balances_records_or_flagged_records(tmp_path):
    src = tmp_path / "scored.jsonl"
    flags = [0, 0, 1, 1, 1, 0, 1, 1, 0, 0]
    src.write_text(
        "".join(json.dumps({"i": i, "flagged": bool(f)}) + "\n" for i, f in enumerate(flags))
    )
    by_records = split_dataset(src, tmp_path / "r", 3)
    assert [(s.start, s.rows) for s in by_records] == [(0, 4), (4, 3), (7, 3)]
    by_flagged = split_dataset(src, tmp_path / "f", 3, balance="flagged")
    counts = [
        sum(json.loads(x)["flagged"] for x in s.path.read_text().splitlines()) for s in by_flagged
    ]
    assert counts == [2, 2, 1]
    assert [
        json.loads(x)["i"] for s in by_flagged for x in s.path.read_text().splitlines()
    ] == list(range(10))
    # more shards than work: one per flagged record; none flagged: one shard
    assert len(split_dataset(src, tmp_path / "m", 50, balance="flagged")) == 5
    src.write_text("".join(json.dumps({"flagged": False}) + "\n" for _ in range(4)))
    assert len(split_dataset(src, tmp_path / "n", 3, balance="flagged")) == 1
    assert len(split_dataset(src, tmp_path / "s", 9)) == 4
    again = shard_of(tmp_path / "s", 2)
    assert (again.start, again.rows, again.of) == (2, 1, 4)


def test_split_and_merge_refuse_bad_input(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text('{"context": ["hi"], "response": "yo"}\n')
    with pytest.raises(OptimusError, match="between 1 and"):
        split_dataset(src, tmp_path / "x", 0)
    with pytest.raises(OptimusError, match="'flagged'"):
        split_dataset(src, tmp_path / "x", 2, balance="flagged")
    with pytest.raises(OptimusError, match="not a split dataset"):
        shard_of(tmp_path, 0)
    with pytest.raises(OptimusError, match="no shard 3"):
        shard_of(split_dataset(src, tmp_path / "y", 1)[0].path.parent, 3)
    parts = [(Path("b"), {"shard": 1.0, "shards": 2.0}), (Path("a"), {"shard": 0, "shards": 2})]
    assert [p.name for p, _ in in_order(parts)] == ["a", "b"]  # kfp.local gives floats
    with pytest.raises(OptimusError, match="expected shards 0..1"):
        in_order([parts[0], parts[0]])
    with pytest.raises(OptimusError, match="no 'shard'"):
        in_order([(Path("a"), {})])


@pytest.mark.slow
def test_curation_in_a_seeds_loop_gets_each_seed(tmp_path):
    """The experiment's shape: the curation sub-pipeline (with its two shard loops) called
    from a loop over seeds. A loop nested directly in the seeds loop would see the shard
    index as the seed under kfp.local 2.17; through the sub-pipeline each seed's data,
    scan and heal are its own."""
    from kfp import dsl, local

    from components.experiment.seed_bank.component import seed_bank
    from optimus_lib.data.io import read_jsonl
    from pipelines.shared import build_curation

    curation = build_curation(cluster=False)

    @dsl.pipeline(name="seeds-of-shards")
    def seeds_of_shards(seeds: list = [3, 4]) -> dsl.Dataset:  # noqa: B006
        with dsl.ParallelFor(seeds, parallelism=1) as seed:
            task = curation(
                data_settings={"n_train": 8, "n_eval_toxic": 2, "n_eval_benign": 2},
                classify_settings={"detector": "wordlist"},
                heal_settings={"mode": "fixed"},
                seed=seed,
                shards=2,
                accelerator_type="",
                accelerator_count=0,
                gpu_node_selector={},
                gpu_tolerations=[],
                cache_pvc="",
                cache_dir="",
                hf_token_secret="",
            )
        return seed_bank(
            train=dsl.Collected(task.outputs["train"]),
            eval_toxic=dsl.Collected(task.outputs["eval_toxic"]),
            eval_benign=dsl.Collected(task.outputs["eval_benign"]),
            scored=dsl.Collected(task.outputs["scored"]),
            sft_data=dsl.Collected(task.outputs["sft_data"]),
            preferences=dsl.Collected(task.outputs["preferences"]),
        ).outputs["bank"]

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    bank = Path(seeds_of_shards().output.path)
    trains = {}
    for seed in (3, 4):
        train = read_jsonl(bank / f"seed{seed}" / "train.jsonl")
        scored = read_jsonl(bank / f"seed{seed}" / "scored.jsonl")
        sft = read_jsonl(bank / f"seed{seed}" / "sft.jsonl")
        assert [r["id"] for r in scored] == [r["id"] for r in train] == [r["id"] for r in sft]
        trains[seed] = [r["id"] for r in train]
    assert trains[3] != trains[4]  # each seed drew its own data
