"""The one place component images are named (``make build-images`` reads it too).

Images go by dependency family, not by stage:

* ``light``: optimus_lib without torch (prepare_data, register, record_rejection);
* ``torch``: optimus_lib with torch, transformers, TRL and PEFT (classify, heal,
  dpo_train, evaluate).

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
FAMILIES = ("light", "torch")
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
    if family not in FAMILIES:
        raise KeyError(f"unknown image family {family!r} (known: {', '.join(FAMILIES)})")
    return f"{registry()}/optimus-{family}:{version or library_version()}"


def locked() -> dict[str, str]:
    """Digest-pinned names from ``images.lock.json`` (empty when there is none)."""
    if not LOCK_FILE.is_file():
        return {}
    pins = json.loads(LOCK_FILE.read_text())
    bad = {k: v for k, v in pins.items() if k not in FAMILIES or "@sha256:" not in str(v)}
    if bad:
        raise ValueError(f"{LOCK_FILE}: expected {{family: 'name@sha256:...'}}, got {bad}")
    return pins


def resolve() -> dict[str, str]:
    """Every family's image: the digest pin when locked, else the tagged name."""
    pins = locked()
    return {f: pins.get(f) or image_name(f) for f in FAMILIES}


IMAGES: dict[str, str] = resolve()

__all__ = ["DEFAULT_REGISTRY", "FAMILIES", "IMAGES", "image_name", "library_version", "resolve"]
