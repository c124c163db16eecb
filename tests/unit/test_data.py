"""Input contract (docs/data.md): both record shapes, labels, unknown keys, line-numbered errors."""

from __future__ import annotations

import json

import pytest
from helpers import write_lines

from optimus_lib.data.io import read_jsonl, read_samples, write_jsonl
from optimus_lib.data.schema import Sample, parse_record, sample_to_record
from optimus_lib.errors import OptimusError

MSG = {
    "id": "m1",
    "messages": [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello!"},
        {"role": "user", "content": "how are you?"},
        {"role": "assistant", "content": "fine, thanks"},
    ],
    "label": "safe",
    "source": "forum-42",
    "meta": {"nested": [1, 2]},
}
CTX = {"context": ["hi", "hey", "what's up"], "response": "you idiot", "label": "toxic", "x": 1}


def test_messages_shape_parses():
    s = parse_record(MSG)
    assert s.context == ["hi there", "hello!", "how are you?"]  # system turn dropped
    assert s.response == "fine, thanks"
    assert s.id == "m1"
    assert s.label == 0
    assert s.roles == ["user", "assistant", "user"]
    assert s.messages()[-1] == {"role": "assistant", "content": "fine, thanks"}


def test_context_shape_parses_and_string_context():
    s = parse_record(CTX, index=7)
    assert s.context == ["hi", "hey", "what's up"]
    assert s.response == "you idiot"
    assert s.label == 1
    assert s.id == "7"  # index used when no id
    one = parse_record({"context": "just one turn", "response": "ok"})
    assert one.context == ["just one turn"]
    assert one.roles == ["user"]


def test_unknown_keys_carried_through():
    s = parse_record(MSG)
    assert s.record["source"] == "forum-42"
    assert s.record["meta"] == {"nested": [1, 2]}
    rec = sample_to_record(parse_record(CTX))
    assert rec["x"] == 1
    assert rec["label"] == "toxic"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("toxic", 1), ("safe", 0), (1, 1), (0, 0), ("TOXIC", 1), (True, 1), (None, None)],
)
def test_labels(value, expected):
    rec = {"context": ["a"], "response": "b"}
    if value is not None:
        rec["label"] = value
    assert parse_record(rec).label == expected


@pytest.mark.parametrize("bad", ["maybe", 2, -1, 0.5, [1]])
def test_bad_label_is_value_error(bad):
    with pytest.raises(ValueError, match="label"):
        parse_record({"context": ["a"], "response": "b", "label": bad})


def test_with_response_copies():
    s = parse_record(CTX)
    t = s.with_response("kind words")
    assert t.response == "kind words" and s.response == "you idiot"
    t.context.append("mutated")
    assert s.context == ["hi", "hey", "what's up"]


def _good(i: int) -> str:
    return json.dumps({"id": f"r{i}", "context": [f"turn {i}"], "response": f"reply {i}"})


@pytest.mark.parametrize(
    ("line3", "reason"),
    [
        ('{"context": ["a"], "response": ', "invalid JSON"),
        ('{"context": ["a"]}', "response"),
        (
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "a"},
                        {"role": "assistant", "content": "b"},
                        {"role": "user", "content": "c"},
                    ]
                }
            ),
            "assistant",
        ),
        ('{"context": ["a"], "response": "b", "label": "maybe"}', "label"),
        ('{"context": ["a"], "response": 5}', "response"),
        ('["not", "an", "object"]', "object"),
        ('{"text": "no known fields"}', "messages"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "role"),
    ],
)
def test_bad_record_reports_file_and_line(tmp_path, line3, reason):
    path = write_lines(tmp_path / "d.jsonl", [_good(1), _good(2), line3, _good(4)])
    with pytest.raises(OptimusError) as exc:
        read_samples(path)
    msg = str(exc.value)
    assert f"{path}:3:" in msg
    assert reason in msg
    assert "\n" not in msg


def test_blank_lines_skipped_and_line_numbers_kept(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [_good(1), "", "   ", "{oops"])
    with pytest.raises(OptimusError, match=r"d\.jsonl:4: invalid JSON"):
        read_samples(path)
    with pytest.raises(OptimusError, match=r"d\.jsonl:4: invalid JSON"):
        read_jsonl(path)


def test_read_samples_mixed_shapes_in_order(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(MSG), json.dumps(CTX), _good(3)])
    samples = read_samples(path)
    assert [s.response for s in samples] == ["fine, thanks", "you idiot", "reply 3"]
    assert [s.id for s in samples] == ["m1", "1", "r3"]


def test_missing_and_empty_file(tmp_path):
    with pytest.raises(OptimusError, match="no such file"):
        read_samples(tmp_path / "nope.jsonl")
    empty = write_lines(tmp_path / "e.jsonl", [""])
    with pytest.raises(OptimusError, match="no records"):
        read_samples(empty)


def test_write_jsonl_roundtrip_atomic(tmp_path):
    recs = [{"a": 1, "t": "ünïcode <|im_end|>"}, {"b": [1, 2]}]
    path = tmp_path / "sub" / "out.jsonl"
    write_jsonl(path, recs)
    assert read_jsonl(path) == recs
    assert [p.name for p in path.parent.iterdir()] == ["out.jsonl"]  # no temp left behind


def test_write_jsonl_failure_leaves_old_file(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"ok": 1}])

    def boom():
        yield {"partial": 1}
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_jsonl(path, boom())
    assert read_jsonl(path) == [{"ok": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


# ---- poisoned training set / eval sets (bundled sources) ------------------------------
def test_build_training_set_counts_and_determinism():
    from optimus_lib.threats.poison import build_training_set

    a = build_training_set(50, 0.3, seed=0)
    assert len(a) == 50
    assert sum(s.label for s in a) == 15
    assert all(s.record["poisoned"] == (s.label == 1) for s in a)
    assert all(s.category != "benign" for s in a if s.label == 1)
    b = build_training_set(50, 0.3, seed=0)
    assert [(s.id, s.context, s.response) for s in a] == [(s.id, s.context, s.response) for s in b]
    c = build_training_set(50, 0.3, seed=1)
    assert [s.response for s in a] != [s.response for s in c]


def test_eval_toxic_contexts_never_injected_replies():
    from optimus_lib.threats.poison import build_eval_sets, build_training_set, toxic_texts

    train = build_training_set(50, 0.3, seed=0)
    injected = {s.response for s in train if s.label == 1}
    toxic, benign = build_eval_sets(100, 5, seed=0, skip=60)
    assert len(toxic) == 100 and len(benign) == 5
    contexts = {s.context[0] for s in toxic}
    assert not contexts & injected
    assert not contexts & {t for _, t in toxic_texts()}
    assert all(s.label == 1 for s in toxic) and all(s.label == 0 for s in benign)
    train_convs = {s.id.split("-")[1] for s in train}
    assert not train_convs & {s.id.split("-")[1] for s in benign}


def test_sample_to_record_roundtrip():
    s = Sample(context=["a", "b"], response="c", id="z", label=1, category="insult")
    back = parse_record(sample_to_record(s))
    assert (back.context, back.response, back.id, back.label, back.category) == (
        ["a", "b"],
        "c",
        "z",
        1,
        "insult",
    )


def test_non_utf8_file_is_one_line_error(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"context": ["hi"], "response": "ok"}\n{"context": ["\xff"]}\n')
    with pytest.raises(OptimusError, match="latin1.jsonl"):
        read_samples(path)
