"""The one place component images are named (``make build-images`` reads it too).

Images go by dependency family, not by stage:

* ``light``: optimus_lib without torch (prepare_data, register, record_rejection);
* ``torch``: optimus_lib with torch, transformers, TRL and PEFT (classify, heal,
  dpo_train, evaluate);
* ``vllm`` (optional, ``make build-images VLLM=1``): the torch family's code on vLLM's
  torch, for GPU tasks that set ``engine: vllm``; no component names it by default.

Each family's Dockerfile is ``docker/<family>/Dockerfile``; its builder stages start
``FROM`` :data:`BASE_IMAGE` (``docker/base/build.sh``, unless ``BASE_IMAGE`` is
overridden) and its final stage ``FROM`` :data:`RUNTIME_IMAGE`
(``docker/runtime/Dockerfile``, built from the same base).

A name is ``{OPTIMUS_REGISTRY}/optimus-{family}:{version}``: the registry comes from the
environment (default ``ghcr.io/optimus-defense``), the tag is the optimus_lib version, so a
component and the library it runs always match. Once images are pushed,
``components/images.lock.json`` (``{"family": "name@sha256:..."}``) pins them by digest and
wins over the tag.

Standard library only: importing this module must not import optimus_lib (or torch).
"""

from __future__ import annotations

import json
import os
import re
from importlib import metadata
from pathlib import Path

DEFAULT_REGISTRY = "ghcr.io/optimus-defense"
# The families the components run on (each has an entry in IMAGES) ...
FAMILIES = ("light", "torch")
# ... and the ones built only on request.
OPTIONAL_FAMILIES = ("vllm",)
# The offline-built Debian bookworm + Python base (docker/base/build.sh; local only).
BASE_IMAGE = "optimus-base:bookworm"
# The final stage every family starts from (docker/runtime/Dockerfile: the non-root user,
# the shared environment and labels, the command), built from BASE_IMAGE before the
# families (local only: a pushed family image holds its layers).
RUNTIME_IMAGE = "optimus-runtime:bookworm"
LOCK_FILE = Path(__file__).with_name("images.lock.json")
_ROOT = Path(__file__).resolve().parents[1]


def library_version() -> str:
    """optimus_lib's ``__version__``, read from its source (no import); else the installed
    distribution's version."""
    init = _ROOT / "optimus_lib" / "__init__.py"
    if init.is_file():
        m = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', init.read_text(), re.M)
        if m:
            return m.group(1)
    return metadata.version("optimus-defense")


def registry() -> str:
    """The image registry: ``$OPTIMUS_REGISTRY`` or the default, without a trailing slash."""
    return (os.environ.get("OPTIMUS_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")


def image_name(family: str, version: str | None = None) -> str:
    """The tagged name of one family's image (what ``make build-images`` tags)."""
    known = FAMILIES + OPTIONAL_FAMILIES
    if family not in known:
        raise KeyError(f"unknown image family {family!r} (known: {', '.join(known)})")
    return f"{registry()}/optimus-{family}:{version or library_version()}"


def locked() -> dict[str, str]:
    """Digest-pinned names from ``images.lock.json`` (empty when there is none)."""
    if not LOCK_FILE.is_file():
        return {}
    pins = json.loads(LOCK_FILE.read_text())
    known = FAMILIES + OPTIONAL_FAMILIES
    bad = {k: v for k, v in pins.items() if k not in known or "@sha256:" not in str(v)}
    if bad:
        raise ValueError(f"{LOCK_FILE}: expected {{family: 'name@sha256:...'}}, got {bad}")
    return pins


def resolve() -> dict[str, str]:
    """Every family's image: the digest pin when locked, else the tagged name."""
    pins = locked()
    return {f: pins.get(f) or image_name(f) for f in FAMILIES}


IMAGES: dict[str, str] = resolve()

__all__ = [
    "BASE_IMAGE",
    "DEFAULT_REGISTRY",
    "FAMILIES",
    "IMAGES",
    "OPTIONAL_FAMILIES",
    "RUNTIME_IMAGE",
    "image_name",
    "library_version",
    "resolve",
]
