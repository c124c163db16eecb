"""Stage 0 (helper): the training dialogs and the held-out evaluation sets.

Either the bundled poisoned benchmark (chit-chat dialogs with confirmed-toxic replies
injected under a threat model; ground truth kept in ``label``/``category``) or a user's
JSONL, validated line by line. The evaluation sets are always the bundled held-out ones
unless the user gives their own: RealToxicityPrompts openings that never appear as
training replies, and chit-chat conversations never used for training.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from optimus_lib.data.io import read_samples, write_jsonl
from optimus_lib.data.schema import Sample, sample_to_record
from optimus_lib.errors import OptimusError
from optimus_lib.settings import Strict

#: Run seeds of attacked data: ``k * ATTACK_SEED_STRIDE + s`` is seed s under attack k.
ATTACK_SEED_STRIDE = 1000


class DataSettings(Strict):
    """Where the dialogs come from. ``train_uri`` empty = the bundled poisoned benchmark;
    else a local JSONL path, a ``gs://bucket/object`` URI or ``hf:NAME[:SPLIT]``."""

    train_uri: str = ""
    seed: int = 0
    n_train: int = Field(200, ge=4)
    toxic_fraction: float = Field(0.3, ge=0.0, le=1.0)
    max_context_turns: int = Field(3, ge=1)
    n_eval_toxic: int = Field(30, ge=1)
    n_eval_benign: int = Field(30, ge=1)
    eval_toxic_uri: str = ""
    eval_benign_uri: str = ""
    # Threat model of the bundled training set: indiscriminate injection, a backdoor
    # (trigger phrase in the context paired with toxic replies), or one category only.
    threat: Literal["inject", "backdoor", "category"] = "inject"
    trigger: str = "cf-2024"
    threat_category: str | None = None
    # Adaptive attack on the defense, applied to the injected toxic replies:
    # "jailbreak:<variant>" or "perturb:<kind>" (see optimus_lib.threats.evasion).
    evasion: str | None = None
    evasion_rate: float = Field(0.5, ge=0.0, le=1.0)
    # Attacked copies of the data as extra seeds (the experiment's ``attacks`` axis): a
    # run seed ``k * ATTACK_SEED_STRIDE + s`` with k >= 1 is seed ``s``'s data with
    # ``evasion: attacks[k - 1]`` (:meth:`for_run_seed`).
    attacks: list[str] = []

    @field_validator("train_uri", "eval_toxic_uri", "eval_benign_uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        """The form of a data URI (a local path is checked where it is read: on a cluster
        it names a file in the task's pod)."""
        if v.startswith("gs://"):
            bucket, _, name = v[5:].partition("/")
            if not bucket or not name:
                raise ValueError(f"{v}: expected gs://BUCKET/OBJECT")
        elif v.startswith("hf:") and not v[3:].strip(":"):
            raise ValueError(f"{v}: expected hf:NAME[:SPLIT] or hf:NAME@REVISION[:SPLIT]")
        elif "://" in v and not v.startswith("file://"):
            raise ValueError(f"{v}: use a local path, file://, gs://BUCKET/OBJECT or hf:NAME")
        return v

    @model_validator(mode="after")
    def _threat(self) -> DataSettings:
        if self.threat == "category" and not self.threat_category:
            raise ValueError("threat 'category' needs threat_category (e.g. insult)")
        for ev in [self.evasion, *self.attacks]:
            if ev is not None:
                kind, _, name = ev.partition(":")
                if kind not in ("jailbreak", "perturb") or not name:
                    raise ValueError("evasion must be 'jailbreak:<variant>' or 'perturb:<kind>'")
        if self.attacks and self.evasion is not None:
            raise ValueError("attacks: the clean seeds must be clean; leave evasion unset")
        return self

    def for_run_seed(self) -> DataSettings:
        """These settings for the data ``seed`` stands for: itself, or with ``attacks``,
        seed ``s``'s data under its attack when ``seed = k * ATTACK_SEED_STRIDE + s``
        (k >= 1): the same dialogs and evaluation sets, ``evasion_rate`` of the injected
        toxic replies carrying the evasion."""
        k, s = divmod(self.seed, ATTACK_SEED_STRIDE)
        if k == 0 or not self.attacks:
            return self
        if k > len(self.attacks):
            raise OptimusError(f"seed {self.seed}: no attack {k} (attacks: {self.attacks})")
        return self.model_copy(update={"seed": s, "evasion": self.attacks[k - 1]})


@dataclass
class DataResult:
    n_train: int
    n_toxic: int | None  # labelled toxic training dialogs (None: no labels)
    n_eval_toxic: int
    n_eval_benign: int

    def as_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items() if v is not None}


def as_record(s: Sample) -> dict:
    """A sample as a JSONL record, keeping a user's own record shape when it has one."""
    return s.record if ("messages" in s.record or "context" in s.record) else sample_to_record(s)


def fetch_uri(uri: str, dest: Path) -> Path:
    """Copy a local path or a ``gs://`` object to ``dest``; returns ``dest``.

    GCS access uses application default credentials (Workload Identity on GKE); there
    is no key-file option on purpose.
    """
    if uri.startswith("gs://"):
        try:
            from google.cloud import storage
        except ImportError:
            raise OptimusError(f"{uri}: gs:// URIs need google-cloud-storage") from None
        bucket, _, name = uri[5:].partition("/")
        if not bucket or not name:
            raise OptimusError(f"{uri}: expected gs://BUCKET/OBJECT")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            storage.Client().bucket(bucket).blob(name).download_to_filename(str(dest))
        except Exception as exc:  # noqa: BLE001 - any auth/network/404 is a user-facing error
            raise OptimusError(f"{uri}: cannot download ({str(exc).splitlines()[0]})") from None
        return dest
    src = Path(uri.removeprefix("file://")).expanduser()
    if not src.is_file():
        raise OptimusError(f"{uri}: no such file")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest


def _load(uri: str, scratch: Path) -> list[Sample]:
    if uri.startswith("hf:"):
        from optimus_lib.data.sources import load_hf_dataset

        return load_hf_dataset(uri)
    if uri.startswith("gs://"):
        # Errors then name the object, not the scratch file.
        path = fetch_uri(uri, scratch)
        try:
            return read_samples(path)
        except OptimusError as exc:
            raise OptimusError(str(exc).replace(str(path), uri)) from None
    return read_samples(uri.removeprefix("file://"))


def prepare_data(
    settings: DataSettings,
    train_out: Path,
    eval_toxic_out: Path,
    eval_benign_out: Path,
    eval_trigger_out: Path | None = None,
) -> DataResult:
    """Write the training set and the toxic / benign evaluation sets as JSONL.

    ``eval_trigger_out``: with the backdoor threat, benign test contexts carrying the
    trigger (their RTR shows whether a backdoor survived the defense).
    """
    from optimus_lib.threats.poison import build_eval_sets, build_threat_set

    d = settings.for_run_seed()
    if d.train_uri:
        train = _load(d.train_uri, Path(train_out).with_suffix(".download"))
    else:
        train = build_threat_set(
            d.n_train,
            d.toxic_fraction,
            d.seed,
            d.max_context_turns,
            d.threat,
            d.trigger,
            d.threat_category,
            d.evasion,
            d.evasion_rate,
        )
    # Benign test dialogs come from chit-chat conversations the training set did not use.
    used = [re.match(r"chitchat-(\d+)-", s.id) for s in train]
    skip = 1 + max((int(m.group(1)) for m in used if m), default=-1)
    tox, ben = [], []
    if not (d.eval_toxic_uri and d.eval_benign_uri):  # else both are the user's own
        tox, ben = build_eval_sets(
            d.n_eval_toxic, d.n_eval_benign, d.seed, skip, d.max_context_turns
        )
    if d.eval_toxic_uri:
        tox = _load(d.eval_toxic_uri, Path(eval_toxic_out).with_suffix(".download"))
        tox = tox[: d.n_eval_toxic]
    if d.eval_benign_uri:
        ben = _load(d.eval_benign_uri, Path(eval_benign_out).with_suffix(".download"))
        ben = ben[: d.n_eval_benign]
    write_jsonl(train_out, [as_record(s) for s in train])
    write_jsonl(eval_toxic_out, [as_record(s) for s in tox])
    write_jsonl(eval_benign_out, [as_record(s) for s in ben])
    if eval_trigger_out is not None:
        from optimus_lib.threats.attacks import add_trigger

        write_jsonl(
            eval_trigger_out, [as_record(s) for s in add_trigger(ben, d.trigger, "end", d.seed)]
        )
    labels = [s.label for s in train]
    return DataResult(
        n_train=len(train),
        n_toxic=None if all(y is None for y in labels) else sum(y == 1 for y in labels),
        n_eval_toxic=len(tox),
        n_eval_benign=len(ben),
    )
