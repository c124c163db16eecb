"""The Kubeflow Model Registry backend: the registry indexes, object storage holds the files.

Kubeflow Model Registry (KMR) keeps metadata only (a RegisteredModel, its ModelVersions,
each version's ModelArtifact with a storage URI); the files must live elsewhere. So this
backend is a storage backend (``gs://bucket/prefix`` or a folder, with everything the
other backends guarantee) plus a KMR entry per version that points at the files::

    kubeflow-registry://HOST[:PORT][/PATH]?storage=STORAGE        https (port 443 by default)
    kubeflow-registry+http://HOST[:PORT][/PATH]?storage=STORAGE   plain http (port 8080)

    optional: &author=NAME (recorded on each version; default optimus),
              &timeout=SECONDS (per registry call; default 60)

* **Register**: the registry must answer first (an unreachable one fails before any file
  is written); a pinned version that KMR already has is refused; then the files go to the
  storage exactly as on the storage backend alone (claim, create-only files, manifest
  last); then the KMR entry is created: the model (if new), the version (custom
  properties: the files' URI, the manifest's sha256, the gate, the metrics) and its model
  artifact (URI: the version folder, format ``peft-adapter``). KMR refuses a second
  version of the same name (409), so nothing is overwritten there either. A registration
  that dies after the files and before the entry leaves a version that is not indexed:
  burnt (listed as incomplete, never shown or pulled), as a crash is on the storage
  backends.
* **Read** (list, show, pull): the versions come from KMR (those carrying an Optimus
  manifest digest); the files from the storage, and the manifest must have the sha256 KMR
  recorded, so the index and the files cannot silently disagree.
* **Aliases and rejections** stay in the storage: KMR has no compare-and-swap (an update
  is a plain PATCH, no precondition), and aliases move only by compare-and-swap.
* **Authentication**: the client's own way, a Kubernetes service-account token, never a
  key file: the file named by ``KF_PIPELINES_SA_TOKEN_PATH``, else the pod's token at
  ``/var/run/secrets/kubernetes.io/serviceaccount/token``, sent as ``Authorization:
  Bearer``. https needs one; plain http sends it when there is one.

The client (``model-registry``, the ``kubeflow-registry`` extra) is imported only when a
registry call is made: the library and the light image do not need it. Its calls are
coroutines; they run here on a fresh event loop per call (in a helper thread where a loop
is already running), so the client's global ``nest_asyncio`` patch is never applied.
"""

from __future__ import annotations

import asyncio
import json
import logging
import warnings
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from optimus_lib.errors import OptimusError
from optimus_lib.registry.base import (
    MANIFEST,
    Files,
    ModelRegistry,
    VersionInfo,
    _version_key,
    check_name,
    sha256_bytes,
)

T = TypeVar("T")

SCHEMES = {"kubeflow-registry": "https", "kubeflow-registry+http": "http"}
EXTRA = "pip install 'optimus-defense[kubeflow-registry]'"
SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
STORAGE_URI = "optimus_storage_uri"  # custom properties on each KMR model version
MANIFEST_SHA = "optimus_manifest_sha256"
FORMAT = ("peft-adapter", "1")  # the model artifact's model_format_name / _version
OPTIONS = {"storage", "author", "timeout"}


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class KubeflowRegistry(ModelRegistry):
    page_size = 100  # items per list request

    def __init__(self, uri: str):
        self.uri = uri
        parts = urlsplit(uri)
        self.protocol = SCHEMES[parts.scheme.lower()]
        form = f"{parts.scheme}://HOST[:PORT]?storage=gs://bucket/prefix"
        try:
            port = parts.port
        except ValueError:
            raise OptimusError(f"{uri}: not a valid port (use {form})") from None
        if not parts.hostname:
            raise OptimusError(f"{uri}: give the registry's host (use {form})")
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - OPTIONS)
        if unknown:
            raise OptimusError(
                f"{uri}: unknown option {unknown[0]!r} (use {', '.join(sorted(OPTIONS))})"
            )
        storage = query.get("storage", [""])[-1].strip()
        if not storage:
            raise OptimusError(f"{uri}: give the storage that holds the files (use {form})")
        if storage.split("://", 1)[0].lower() in SCHEMES:
            raise OptimusError(f"{uri}: the storage must be gs:// or a folder, not a registry")
        from optimus_lib.registry import open_registry

        self.storage = open_registry(storage)
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        self.port = port or (443 if self.protocol == "https" else 8080)
        self.url = f"{self.protocol}://{host}:{self.port}{parts.path.rstrip('/')}"
        self.author = query.get("author", ["optimus"])[-1] or "optimus"
        try:
            self.timeout = float(query.get("timeout", ["60"])[-1])
        except ValueError:
            self.timeout = 0.0
        if not self.timeout > 0:
            raise OptimusError(f"{uri}: timeout must be a positive number of seconds")
        self._client: Any = None
        self._found: dict[tuple[str, str], Any] = {}  # KMR versions seen (never change)
        self._manifests: dict[tuple[str, str], dict[str, str]] = {}

    # ---- the client -------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The model-registry client, connected (its constructor lists one model)."""
        if self._client is None:
            try:
                from model_registry import ModelRegistry as KMRClient
            except ImportError:
                raise OptimusError(
                    f"{self.url}: the Kubeflow Model Registry backend needs the "
                    f"model-registry client ({EXTRA})"
                ) from None
            with self._calls(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "User access token is missing" (plain http)
                self._client = KMRClient(
                    self.url,
                    self.port,
                    author=self.author,
                    is_secure=self.protocol == "https",
                    log_level=logging.ERROR,  # its port hints would add lines to our errors
                    async_runner=self._run,
                )
        return self._client

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run one client coroutine to completion within the timeout."""

        async def bounded() -> T:
            return await asyncio.wait_for(coro, self.timeout)

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(bounded())
        with ThreadPoolExecutor(1) as pool:  # called from inside a running loop (a notebook)
            return pool.submit(asyncio.run, bounded()).result()

    @contextmanager
    def _calls(self) -> Iterator[None]:
        """Registry and connection errors as one line."""
        try:
            yield
        except OptimusError:
            raise
        except Exception as exc:
            line = self._explain(exc)
            if line is None:
                raise
            raise OptimusError(line) from None

    def _explain(self, exc: Exception) -> str | None:
        import aiohttp
        import pydantic
        from model_registry.exceptions import StoreError
        from mr_openapi.exceptions import ApiException

        if isinstance(exc, TimeoutError | asyncio.TimeoutError):  # distinct before 3.11
            return f"{self.url}: no answer within {self.timeout:g} s (&timeout=SECONDS in the URI)"
        if isinstance(exc, ApiException):
            message = exc.reason or ""
            with suppress(TypeError, ValueError, KeyError):
                message = json.loads(exc.body)["message"]
            where = f"{self.url}: {exc.status} {exc.reason}"
            if exc.status in (401, 403):
                return f"{where}: the service-account token was refused ({_one_line(message)})"
            return f"{where}: {_one_line(message)}"
        if isinstance(exc, StoreError):
            if "user token must be provided" in str(exc):
                return (
                    f"{self.url}: https needs a service-account token: none found "
                    f"(KF_PIPELINES_SA_TOKEN_PATH names a token file, else {SA_TOKEN})"
                )
            return f"{self.url}: {_one_line(exc)}"
        if isinstance(exc, aiohttp.ClientError | OSError):
            return f"{self.url}: unreachable ({_one_line(exc) or type(exc).__name__})"
        if isinstance(exc, pydantic.ValidationError):
            return f"{self.url}: not a Kubeflow Model Registry v1 answer ({exc.title})"
        return None

    # ---- what KMR holds ---------------------------------------------------------------
    def _kmr_version(self, name: str, version: str) -> Any:
        """The KMR model version (None: the model or the version is not there)."""
        from model_registry.exceptions import StoreError

        if (name, version) not in self._found:
            with self._calls():
                try:
                    mv = self.client.get_model_version(name, version)
                except StoreError:  # "Model <name> does not exist"
                    return None
            if mv is None:
                return None
            self._found[(name, version)] = mv
        return self._found[(name, version)]

    def _kmr_versions(self, name: str) -> list[Any]:
        from model_registry.exceptions import StoreError

        with self._calls():
            try:
                pager = self.client.get_model_versions(name)
            except StoreError:  # "Model <name> does not exist"
                return []
            return list(pager.page_size(self.page_size))

    @staticmethod
    def _is_entry(mv: Any) -> bool:
        """Registered by Optimus: it records the manifest digest (other versions in a shared
        registry are not ours to show or pull)."""
        return bool(mv is not None and MANIFEST_SHA in (mv.custom_properties or {}))

    # ---- versions ---------------------------------------------------------------------
    def register(self, name: str, version: str, build: Callable[[str], Files]) -> VersionInfo:
        """Files to the storage (claim, create-only, manifest last), then the KMR entry."""
        check_name("name", name)
        self.client  # noqa: B018 - an unreachable registry fails before any file is written
        info = super().register(name, version, build)
        base = f"models/{name}/{info.version}"
        manifest = self.storage._read(f"{base}/{MANIFEST}") or b""
        props: dict[str, Any] = {STORAGE_URI: info.uri, MANIFEST_SHA: sha256_bytes(manifest)}
        ev = json.loads(self.storage._read(f"{base}/metrics.json") or b"{}")
        if isinstance(ev.get("gate"), dict):
            props["gate_passed"] = bool(ev["gate"].get("passed"))
        for key, value in (ev.get("metrics") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                props[f"metric_{key}"] = float(value)
        try:
            self._index(name, info.version, info.uri, props)
        except OptimusError as exc:
            raise OptimusError(
                f"{exc}; the files at {info.uri} stay unindexed (that version is burnt)"
            ) from None
        return info

    def _index(self, name: str, version: str, uri: str, props: dict[str, Any]) -> None:
        from model_registry.exceptions import StoreError
        from mr_openapi.exceptions import ConflictException

        for attempt in range(2):
            with self._calls():
                try:
                    self.client.register_model(
                        name,
                        uri,
                        version=version,
                        model_format_name=FORMAT[0],
                        model_format_version=FORMAT[1],
                        version_description=f"Optimus adapter, card and lineage at {uri}",
                        metadata=props,
                    )
                    return
                except (ConflictException, StoreError) as exc:
                    if isinstance(exc, StoreError) and "already exists" not in str(exc):
                        raise
                    if attempt or self._kmr_version(name, version) is not None:
                        raise OptimusError(
                            f"{self.url}: {name} version {version!r} is already registered "
                            "in the Kubeflow Model Registry (versions are immutable)"
                        ) from None
                    # the model itself was created by a concurrent registration: again

    def _claim_version(self, name: str, version: str) -> str:
        if version:
            check_name("version", version)
            if self._kmr_version(name, version) is not None:
                raise OptimusError(
                    f"{self.url}: {name} version {version!r} is already registered in the "
                    "Kubeflow Model Registry (versions are immutable)"
                )
        return super()._claim_version(name, version)

    def _taken(self, name: str) -> list[str]:
        return sorted(set(super()._taken(name)) | {mv.name for mv in self._kmr_versions(name)})

    def names(self) -> list[str]:
        with self._calls():
            models = self.client.get_registered_models().page_size(self.page_size)
            indexed = {rm.name for rm in models}
        return sorted(indexed | set(self.storage.names()))

    def versions(self, name: str, include_incomplete: bool = False) -> list[VersionInfo]:
        """Versions KMR indexes, oldest first; with ``include_incomplete`` also the storage's
        versions it does not index (crashed registrations: burnt)."""
        check_name("name", name)
        out = []
        for mv in self._kmr_versions(name):
            if not self._is_entry(mv):
                continue
            self._found[(name, mv.name)] = mv
            uri = str(mv.custom_properties.get(STORAGE_URI, ""))
            created = int(mv.create_time_since_epoch or 0) / 1000
            out.append(VersionInfo(name, mv.name, uri, True, created))
        if include_incomplete:
            indexed = {v.version for v in out}
            out += [
                replace(v, complete=False)
                for v in self.storage.versions(name, include_incomplete=True)
                if v.version not in indexed
            ]
        return sorted(out, key=lambda i: (i.created, _version_key(i.version)))

    def manifest(self, name: str, version: str) -> dict[str, str] | None:
        """The storage's manifest of a version KMR indexes, checked against the digest KMR
        recorded; None when KMR has no such (Optimus) version."""
        check_name("name", name)
        if (name, version) in self._manifests:
            return self._manifests[(name, version)]
        mv = self._kmr_version(name, version)
        if not self._is_entry(mv):
            return None
        where = self.storage.uri_of(f"models/{name}/{version}")
        data = self.storage._read(f"models/{name}/{version}/{MANIFEST}")
        if data is None:
            raise OptimusError(
                f"{name}@{version}: the registry indexes it with its files at "
                f"{mv.custom_properties.get(STORAGE_URI)}, but {where} has no manifest "
                "(is ?storage= the storage it was registered with?)"
            )
        if sha256_bytes(data) != mv.custom_properties[MANIFEST_SHA]:
            raise OptimusError(
                f"{name}@{version}: the manifest at {where} is not the one the registry "
                "recorded (sha256 differs); not trusted"
            )
        self._manifests[(name, version)] = json.loads(data)
        return self._manifests[(name, version)]

    # ---- storage primitives: the files, aliases and rejections live there -------------
    def _create(self, key: str, data: bytes) -> None:
        self.storage._create(key, data)

    def _create_file(self, key: str, src: Path) -> None:
        self.storage._create_file(key, src)

    def _claim(self, key: str, data: bytes) -> None:
        self.storage._claim(key, data)

    def _read(self, key: str) -> bytes | None:
        return self.storage._read(key)

    def _read_gen(self, key: str) -> tuple[bytes | None, Any]:
        return self.storage._read_gen(key)

    def _swap(self, key: str, data: bytes, generation: Any) -> None:
        self.storage._swap(key, data, generation)

    def _list(self, prefix: str) -> dict[str, float]:
        return self.storage._list(prefix)

    def _dirs(self, prefix: str) -> list[str]:
        return self.storage._dirs(prefix)

    def _download(self, key: str, dest: Path) -> None:
        self.storage._download(key, dest)

    def uri_of(self, key: str) -> str:
        return self.storage.uri_of(key)

    def local_path(self, key: str) -> Path | None:
        return self.storage.local_path(key)
