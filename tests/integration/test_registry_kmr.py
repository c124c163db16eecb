"""What only the Kubeflow Model Registry backend does (test_registry.py runs the shared
behaviour on it too): what KMR ends up holding, refusals before any file is written, a
conflict at indexing time, connection, token and client errors as one line, manifest
digests, paging.

The real model-registry client talks over real HTTP to the KMR REST stand-in of
tests/standins.py (``kmr_server``); the files go to a local folder.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from standins import KMR_API, kmr_routes, serve
from test_registry import cli, make_adapter, make_evaluation, one_line, settings, sha

from optimus_lib.errors import OptimusError
from optimus_lib.registry import open_registry
from optimus_lib.registry.kubeflow import SA_TOKEN, KubeflowRegistry
from optimus_lib.stages import register as R

pytestmark = pytest.mark.integration  # real clients against stand-in servers on 127.0.0.1

EXTRA = "pip install 'optimus-defense[kubeflow-registry]'"


def kmr_uri(url: str, storage: Path, scheme: str = "kubeflow-registry+http", **opts) -> str:
    host = url.removeprefix("http://")
    extra = "".join(f"&{k}={v}" for k, v in opts.items())
    return f"{scheme}://{host}?storage={storage}{extra}"


@pytest.fixture
def inputs(tmp_path):
    return make_adapter(tmp_path / "a", "A"), make_evaluation(tmp_path / "ev.json")


def register_cli(capsys, uri: str, adapter: Path, ev: Path, *extra: str):
    return cli(capsys, "models", "register", str(adapter), "--registry", uri, "--name", "chat",
               "--metrics", str(ev), *extra)  # fmt: skip


def value(prop: dict) -> object:
    """A typed metadata value as the server keeps it."""
    kind = prop["metadataType"][len("Metadata") : -len("Value")].lower()
    return prop[f"{kind}_value"]


# ---- the round trip and what KMR holds --------------------------------------------------
def test_round_trip_through_the_cli_indexes_each_version(kmr_server, inputs, tmp_path, capsys):
    stand_in, store = kmr_server
    adapter, ev = inputs
    files = tmp_path / "files"
    uri = kmr_uri(stand_in.url, files)
    for expected in ("v1", "v2"):
        code, out, err = register_cli(capsys, uri, adapter, ev)
        assert code == 0, err
        folder = (files / "models/chat" / expected).resolve().as_uri()
        assert f"registered chat {expected} ->" in out and folder in "".join(out.split())

    code, out, err = cli(capsys, "models", "list", "--registry", uri)
    assert code == 0, err
    assert "v1" in out and "v2" in out and "latest" in out and "incomplete" not in out
    code, out, err = cli(capsys, "models", "show", "chat@v1", "--registry", uri)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["uri"] == (files / "models/chat/v1").resolve().as_uri()
    assert shown["gate"]["passed"] is True and "adapter/adapter_model.safetensors" in shown["files"]
    code, out, err = cli(capsys, "models", "pull", "chat", "--registry", uri,
                         "-o", str(tmp_path / "pulled"))  # fmt: skip
    assert code == 0, err
    assert "pulled chat v2" in out
    for f in adapter.iterdir():
        assert sha(tmp_path / "pulled" / "adapter" / f.name) == sha(f)

    # KMR: one model, two versions pointing at their files, one model artifact each
    (rm,) = store.registered_models.values()
    assert rm["name"] == "chat" and rm["owner"] == "optimus"
    versions = {v["name"]: v for v in store.model_versions.values()}
    assert sorted(versions) == ["v1", "v2"]
    for name, mv in versions.items():
        folder = files / "models/chat" / name
        props = {k: value(p) for k, p in mv["customProperties"].items()}
        assert mv["registeredModelId"] == rm["id"] and mv["author"] == "optimus"
        assert props["optimus_storage_uri"] == folder.resolve().as_uri()
        assert props["optimus_manifest_sha256"] == sha(folder / "MANIFEST.json")
        assert props["gate_passed"] is True and props["metric_rtr_toxic"] == 0.1
        (art,) = [a for a in store.artifacts.values() if a["_parent"] == mv["id"]]
        assert art["artifactType"] == "model-artifact" and art["uri"] == folder.resolve().as_uri()
        assert art["modelFormatName"] == "peft-adapter"
    posts = [r.path.removeprefix(KMR_API) for r in stand_in.requests if r.method == "POST"]
    assert sorted(posts) == ["/model_versions", "/model_versions",
                             "/model_versions/2/artifacts", "/model_versions/4/artifacts",
                             "/registered_models"]  # fmt: skip


# ---- immutability -----------------------------------------------------------------------
def test_an_existing_version_is_refused_before_any_file_is_written(
    kmr_server, inputs, tmp_path, capsys
):
    stand_in, store = kmr_server
    adapter, ev = inputs
    first = kmr_uri(stand_in.url, tmp_path / "first")
    R.register(settings(first, "v1"), adapter, ev, {})
    manifest = sha(tmp_path / "first/models/chat/v1/MANIFEST.json")
    kept = json.dumps(store.model_versions, sort_keys=True)

    other = make_adapter(tmp_path / "b", "B")
    for storage in ("first", "second"):  # the same storage, or another one under the same KMR
        uri = kmr_uri(stand_in.url, tmp_path / storage)
        line = one_line(*register_cli(capsys, uri, other, ev, "--version", "v1")[::2])
        assert "chat version 'v1' is already registered in the Kubeflow Model Registry" in line
    assert not (tmp_path / "second").exists()  # refused before the storage was touched
    assert sha(tmp_path / "first/models/chat/v1/MANIFEST.json") == manifest
    assert json.dumps(store.model_versions, sort_keys=True) == kept
    open_registry(first).pull("chat", "v1", tmp_path / "out")
    assert sha(tmp_path / "out/adapter/adapter_model.safetensors") == sha(
        adapter / "adapter_model.safetensors"
    )


def test_a_conflict_at_indexing_leaves_the_new_files_unindexed(kmr_server, inputs, tmp_path):
    """Another writer creates the version in KMR between our checks and our create: the
    server's 409 is the refusal; our files stay in the storage, unindexed (burnt)."""
    stand_in, store = kmr_server
    adapter, ev = inputs

    def concurrent_writer(body: dict) -> None:
        store.before_version_create = None
        now = store.now_ms()
        store.model_versions["999"] = {**body, "id": "999", "state": "LIVE",
                                       "customProperties": {}, "createTimeSinceEpoch": now,
                                       "lastUpdateTimeSinceEpoch": now}  # fmt: skip

    store.before_version_create = concurrent_writer
    uri = kmr_uri(stand_in.url, tmp_path / "files")
    with pytest.raises(OptimusError) as info:
        R.register(settings(uri, "v1"), adapter, ev, {})
    message = str(info.value)
    assert "chat version 'v1' is already registered in the Kubeflow Model Registry" in message
    assert "stay unindexed (that version is burnt)" in message and "\n" not in message
    assert (tmp_path / "files/models/chat/v1/MANIFEST.json").is_file()
    assert R.list_versions(uri, "chat") == []  # the other writer's version is not ours
    (burnt,) = open_registry(uri).versions("chat", include_incomplete=True)
    assert burnt.version == "v1" and not burnt.complete
    assert [v["id"] for v in store.model_versions.values()] == ["999"]
    assert not store.artifacts


# ---- errors as one line -----------------------------------------------------------------
def test_unreachable_or_silent_registry_is_one_line_and_writes_nothing(
    kmr_env, inputs, tmp_path, capsys
):
    adapter, ev = inputs
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = kmr_uri(f"http://127.0.0.1:{port}", tmp_path / "files")
    line = one_line(*register_cli(capsys, uri, adapter, ev)[::2])
    assert f"http://127.0.0.1:{port}: unreachable (" in line
    assert "unreachable" in one_line(*cli(capsys, "models", "list", "--registry", uri)[::2])
    assert not (tmp_path / "files").exists()

    with socket.socket() as s:  # accepts connections (the kernel's backlog), never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        uri = kmr_uri(f"http://127.0.0.1:{s.getsockname()[1]}", tmp_path / "files", timeout=0.5)
        start = time.monotonic()
        line = one_line(*register_cli(capsys, uri, adapter, ev)[::2])
        assert time.monotonic() - start < 10
    assert "no answer within 0.5 s" in line
    assert not (tmp_path / "files").exists()


def test_missing_client_is_one_line_naming_the_extra(inputs, tmp_path, capsys, monkeypatch):
    adapter, ev = inputs
    monkeypatch.setitem(sys.modules, "model_registry", None)  # import raises ImportError
    uri = kmr_uri("http://127.0.0.1:9", tmp_path / "files")
    line = one_line(*register_cli(capsys, uri, adapter, ev)[::2])
    assert EXTRA in line and "model-registry client" in line
    assert EXTRA in one_line(*cli(capsys, "models", "show", "chat", "--registry", uri)[::2])
    assert not (tmp_path / "files").exists()


def test_the_library_imports_the_client_only_when_calling_the_registry(tmp_path):
    code = (
        "import sys\n"
        "import cli, optimus_lib.stages.register\n"
        "from optimus_lib.registry import open_registry\n"
        f"open_registry('kubeflow-registry://kmr.example:8443?storage={tmp_path}')\n"
        "loaded = sorted({'model_registry', 'mr_openapi', 'aiohttp'} & set(sys.modules))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_path_prefix_is_kept_and_another_api_version_is_one_line(
    kmr_env, inputs, tmp_path, capsys
):
    """Behind a gateway the API sits under a path; a server that does not serve the v1
    API the client calls (an older KMR: v1alpha3) answers 404."""
    adapter, ev = inputs
    routes, store = kmr_routes(prefix="/kmr")
    with serve(routes) as stand_in:
        uri = kmr_uri(stand_in.url + "/kmr", tmp_path / "files")
        assert R.register(settings(uri), adapter, ev, {}).version == "v1"
        assert R.list_versions(uri, "chat") == ["v1"] and len(store.model_versions) == 1
        assert all(r.path.startswith(f"/kmr{KMR_API}/") for r in stand_in.requests)
        uri = kmr_uri(stand_in.url, tmp_path / "files")  # no prefix: nothing serves that path
        line = one_line(*cli(capsys, "models", "list", "--registry", uri)[::2])
        assert f"{stand_in.url}: 404 Not Found" in line


@pytest.mark.parametrize(
    "uri, says",
    [
        ("kubeflow-registry://kmr:99999?storage=x", "not a valid port"),
        ("kubeflow-registry://?storage=x", "give the registry's host"),
        ("kubeflow-registry://kmr:8443", "give the storage that holds the files"),
        ("kubeflow-registry://kmr?storage=x&colour=red", "unknown option 'colour'"),
        ("kubeflow-registry://kmr?storage=kubeflow-registry://b", "must be gs:// or a folder"),
        ("kubeflow-registry://kmr?storage=x&timeout=0", "timeout must be a positive number"),
        ("kubeflow-registry://kmr?storage=s3://b/p", "unsupported registry URI scheme 's3'"),
        ("kubeflow-registry+ftp://kmr?storage=x", "scheme 'kubeflow-registry+ftp'"),
    ],
)
def test_bad_uris_are_one_line(uri, says, capsys):
    assert says in one_line(*cli(capsys, "models", "list", "--registry", uri)[::2])


def test_service_account_token(kmr_server, inputs, tmp_path, monkeypatch, capsys):
    """The token is the client's: the file KF_PIPELINES_SA_TOKEN_PATH names (else the pod's
    service-account token), sent as a bearer token; never a key file."""
    stand_in, store = kmr_server
    adapter, ev = inputs
    store.token = "sa-token-1"
    token = tmp_path / "token"
    token.write_text("sa-token-1")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    uri = kmr_uri(stand_in.url, tmp_path / "files")
    assert R.register(settings(uri), adapter, ev, {}).version == "v1"
    assert {r.headers.get("Authorization") for r in stand_in.requests} == {"Bearer sa-token-1"}

    token.write_text("stale")
    line = one_line(*cli(capsys, "models", "list", "--registry", uri)[::2])
    assert "401 Unauthorized: the service-account token was refused" in line
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-such-token"))
    line = one_line(*cli(capsys, "models", "list", "--registry", uri)[::2])
    assert "Unable read user token" in line and "no-such-token" in line
    if not Path(SA_TOKEN).exists():  # https without any token: refused before connecting
        monkeypatch.delenv("KF_PIPELINES_SA_TOKEN_PATH")
        https = kmr_uri(stand_in.url, tmp_path / "files", scheme="kubeflow-registry")
        line = one_line(*cli(capsys, "models", "list", "--registry", https)[::2])
        assert "https needs a service-account token" in line


# ---- reading: digests, foreign entries, paging ------------------------------------------
def test_a_manifest_that_is_not_the_recorded_one_is_refused(kmr_server, inputs, tmp_path, capsys):
    stand_in, _ = kmr_server
    adapter, ev = inputs
    uri = kmr_uri(stand_in.url, tmp_path / "files")
    R.register(settings(uri, "v1"), adapter, ev, {})
    manifest = tmp_path / "files/models/chat/v1/MANIFEST.json"
    manifest.write_text(manifest.read_text().replace("{", '{"extra.bin": "00",', 1))
    line = one_line(*cli(capsys, "models", "show", "chat@v1", "--registry", uri)[::2])
    assert "not the one the registry recorded (sha256 differs)" in line
    args = ["models", "pull", "chat@v1", "--registry", uri, "-o", str(tmp_path / "out")]
    assert "sha256 differs" in one_line(*cli(capsys, *args)[::2])

    elsewhere = kmr_uri(stand_in.url, tmp_path / "empty")  # the index, but the wrong storage
    line = one_line(*cli(capsys, "models", "show", "chat@v1", "--registry", elsewhere)[::2])
    assert "has no manifest (is ?storage= the storage it was registered with?)" in line


def test_listing_pages_and_shows_only_optimus_entries(kmr_server, inputs, tmp_path, monkeypatch):
    stand_in, store = kmr_server
    adapter, ev = inputs
    monkeypatch.setattr(KubeflowRegistry, "page_size", 2)
    uri = kmr_uri(stand_in.url, tmp_path / "files")
    for _ in range(3):
        R.register(settings(uri), adapter, ev, {})
    # someone else's version of the same model and someone else's model, in the same KMR
    (rm,) = store.registered_models.values()
    now = store.now_ms()
    store.model_versions["900"] = {"id": "900", "name": "v9", "registeredModelId": rm["id"],
                                   "state": "LIVE", "createTimeSinceEpoch": now,
                                   "lastUpdateTimeSinceEpoch": now}  # fmt: skip
    store.registered_models["901"] = {"id": "901", "name": "other", "state": "LIVE",
                                      "createTimeSinceEpoch": now,
                                      "lastUpdateTimeSinceEpoch": now}  # fmt: skip
    reg = open_registry(uri)
    assert [v.version for v in reg.versions("chat")] == ["v1", "v2", "v3"]
    assert reg.names() == ["chat", "other"] and reg.versions("other") == []
    assert reg.manifest("chat", "v9") is None
    listings = [r.query for r in stand_in.requests if r.path.endswith("/versions")]
    assert all(q.get("pageSize") == ["2"] for q in listings)
    assert {"pageSize": ["2"], "nextPageToken": ["2"], "sortOrder": ["ASC"]} in listings
    # an automatic version skips every name KMR holds, ours or not
    assert R.register(settings(uri), adapter, ev, {}).version == "v10"
