"""The model registry that ``register`` writes to (not ``models/specs.py``, which resolves
model specs). One interface, :class:`ModelRegistry`, with backends chosen by URI:

* a local folder (a plain path or ``file://``): exclusive creates, an exclusive ``mkdir``
  claims a version, aliases move under a lock file by atomic rename;
* ``gs://bucket/prefix`` through google-cloud-storage (imported lazily): every object is
  written create-only (``if_generation_match=0``), a ``.claim`` object claims a version,
  aliases move by compare-and-swap on the object's generation.
* ``kubeflow-registry://HOST[:PORT]?storage=STORAGE`` (``kubeflow-registry+http://`` for
  plain http): a Kubeflow Model Registry indexes each version (model, version, model
  artifact) while the files, aliases and rejections live in STORAGE, one of the two
  backends above (:mod:`optimus_lib.registry.kubeflow`; the client is imported lazily).

Layout under the registry root::

    models/<name>/<version>/.claim           created first, create-only: one registration wins
    models/<name>/<version>/<files>          adapter/, model_card.md, metrics.json, lineage.json
    models/<name>/<version>/MANIFEST.json    written LAST: {file: sha256}; a version exists
                                             (is listed, shown, pulled) only with it
    aliases/<name>/<alias>.json              {"version": ...}; moved only by compare-and-swap,
                                             only to a manifested (passed) version
    rejected/<name>/<stamp>-<id>/rejection.json

A registration that dies between objects leaves its claim: that version is burnt (listed
as incomplete, never visible, never reusable); an automatic version skips it.
"""

from __future__ import annotations

from optimus_lib.errors import OptimusError
from optimus_lib.registry.base import (
    CLAIM,
    MANIFEST,
    Conflict,
    ModelRegistry,
    VersionInfo,
    check_name,
)


def open_registry(uri: str) -> ModelRegistry:
    """The backend for ``uri``: a folder (plain path or ``file://``), ``gs://bucket/prefix``
    or ``kubeflow-registry[+http]://HOST[:PORT]?storage=<one of those>``."""
    uri = str(uri).strip()
    if not uri:
        raise OptimusError(
            "registry: give a folder, file://, gs://bucket/prefix or kubeflow-registry:// URI"
        )
    if uri.startswith("gs://"):
        from optimus_lib.registry.gcs import GCSRegistry

        return GCSRegistry(uri)
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in ("kubeflow-registry", "kubeflow-registry+http"):
        from optimus_lib.registry.kubeflow import KubeflowRegistry

        return KubeflowRegistry(uri)
    if scheme and scheme != "file":
        raise OptimusError(
            f"{uri}: unsupported registry URI scheme {scheme!r} (use a folder, file://, gs:// "
            "or kubeflow-registry://)"
        )
    from optimus_lib.registry.local import LocalRegistry

    return LocalRegistry(uri)


__all__ = [
    "CLAIM",
    "MANIFEST",
    "Conflict",
    "ModelRegistry",
    "VersionInfo",
    "check_name",
    "open_registry",
]
