"""The registry interface and the logic every backend shares.

A backend provides a handful of storage primitives over keys (``models/m/v1/x.json``,
relative to the registry root): a create-only write, a claim, a read, a read with a
generation token, a compare-and-swap write, a listing and a download. Everything that
decides correctness (claim first, manifest last, aliases only by compare-and-swap and only
to manifested versions) lives here, once.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optimus_lib.errors import OptimusError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MANIFEST = "MANIFEST.json"
CLAIM = ".claim"
AUTO_VERSION_TRIES = 1000


class Exists(Exception):
    """A create-only write found the object already there (backend-internal)."""


class Conflict(OptimusError):
    """An alias changed between its read and the compare-and-swap: the other writer won."""


def check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not NAME.match(value) or value in (".", ".."):
        raise OptimusError(f"{kind} {value!r}: use letters, digits, '.', '_' and '-' only")
    return value


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _version_key(v: str) -> tuple:
    """Natural order: v2 before v10."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", v))


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


@dataclass
class VersionInfo:
    name: str
    version: str
    uri: str  # the version folder
    complete: bool  # False: claimed, never manifested (a crashed registration): invisible
    created: float  # when the manifest (or, if incomplete, the claim) was written


Files = dict[str, "Path | bytes"]


class ModelRegistry:
    """Versioned, immutable model entries with aliases. Subclasses give the primitives."""

    uri: str

    # ---- primitives (backends) ------------------------------------------------------
    def _create(self, key: str, data: bytes) -> None:
        """Write ``data`` only if ``key`` does not exist; else raise :class:`Exists`."""
        raise NotImplementedError

    def _create_file(self, key: str, src: Path) -> None:
        """Upload a local file only if ``key`` does not exist; else raise :class:`Exists`."""
        raise NotImplementedError

    def _claim(self, key: str, data: bytes) -> None:
        """Claim a version by creating its marker; :class:`Exists` when already claimed."""
        self._create(key, data)

    def _read(self, key: str) -> bytes | None:
        raise NotImplementedError

    def _read_gen(self, key: str) -> tuple[bytes | None, Any]:
        """Content and generation token (0 when the object does not exist)."""
        raise NotImplementedError

    def _swap(self, key: str, data: bytes, generation: Any) -> None:
        """Write only if the generation is still ``generation``; else raise :class:`Conflict`."""
        raise NotImplementedError

    def _list(self, prefix: str) -> dict[str, float]:
        """Every key under ``prefix/`` with its modification time."""
        raise NotImplementedError

    def _dirs(self, prefix: str) -> list[str]:
        """Immediate sub-folder names under ``prefix/``."""
        raise NotImplementedError

    def _download(self, key: str, dest: Path) -> None:
        raise NotImplementedError

    def uri_of(self, key: str) -> str:
        raise NotImplementedError

    def local_path(self, key: str) -> Path | None:
        """The file system path of ``key`` for a local backend; None otherwise."""
        return None

    # ---- versions -------------------------------------------------------------------
    def register(self, name: str, version: str, build: Callable[[str], Files]) -> VersionInfo:
        """Claim ``version`` (empty: the next free v<N>), write ``build(version)``'s files
        create-only, then the manifest. An existing (or burnt) version fails with one line."""
        check_name("name", name)
        version = self._claim_version(name, version)
        base = f"models/{name}/{version}"
        files = build(version)
        manifest: dict[str, str] = {}
        for rel in sorted(files):
            if rel in (MANIFEST, CLAIM) or rel.startswith("/") or ".." in rel.split("/"):
                raise OptimusError(f"{rel}: not a file name a registry entry can hold")
            content = files[rel]
            try:
                if isinstance(content, bytes):
                    manifest[rel] = sha256_bytes(content)
                    self._create(f"{base}/{rel}", content)
                else:
                    manifest[rel] = sha256_file(content)
                    self._create_file(f"{base}/{rel}", Path(content))
            except Exists:
                raise OptimusError(
                    f"{self.uri_of(base)}/{rel}: already exists (versions are immutable)"
                ) from None
        try:
            self._create(f"{base}/{MANIFEST}", _json(manifest))
        except Exists:
            raise OptimusError(f"{self.uri_of(base)}: already has a manifest") from None
        return VersionInfo(name, version, self.uri_of(base), True, time.time())

    def _claim_version(self, name: str, version: str) -> str:
        claim = _json({"id": uuid.uuid4().hex, "claimed_at": time.time()})
        if version:
            check_name("version", version)
            if self._try_claim(name, version, claim):
                return version
            info = {v.version: v for v in self.versions(name, include_incomplete=True)}
            if version in info and not info[version].complete:
                raise OptimusError(
                    f"{self.uri_of(f'models/{name}/{version}')}: version {version!r} is "
                    "already claimed by a registration that has not finished (still running, "
                    "or crashed: then it stays burnt; versions are immutable)"
                )
            raise OptimusError(
                f"{self.uri_of(f'models/{name}/{version}')}: version {version!r} is already "
                "registered (versions are immutable)"
            )
        taken = [d[1:] for d in self._taken(name) if d.startswith("v")]
        n = max((int(t) for t in taken if t.isdigit()), default=0) + 1
        for _ in range(AUTO_VERSION_TRIES):  # a concurrent registration may take v<n> first
            if self._try_claim(name, f"v{n}", claim):
                return f"v{n}"
            n += 1
        raise OptimusError(f"{self.uri_of(f'models/{name}')}: no free version found")

    def _taken(self, name: str) -> list[str]:
        """Version names an automatic version must not reuse (finished or burnt)."""
        return self._dirs(f"models/{name}")

    def _try_claim(self, name: str, version: str, claim: bytes) -> bool:
        key = f"models/{name}/{version}/{CLAIM}"
        try:
            self._claim(key, claim)
            return True
        except Exists:
            # A retried create whose first attempt did land reads back as our own claim.
            return self._read(key) == claim

    def names(self) -> list[str]:
        return sorted(self._dirs("models"))

    def versions(self, name: str, include_incomplete: bool = False) -> list[VersionInfo]:
        """Versions oldest first; only manifested ones unless ``include_incomplete``."""
        check_name("name", name)
        keys = self._list(f"models/{name}")
        found: dict[str, dict[str, float]] = {}
        for key, mtime in keys.items():
            parts = key.split("/")
            if len(parts) >= 4:
                found.setdefault(parts[2], {})[parts[3] if len(parts) == 4 else ""] = mtime
        out = []
        for v, files in found.items():
            complete = MANIFEST in files
            if complete or include_incomplete:
                created = files.get(MANIFEST, files.get(CLAIM, min(files.values())))
                out.append(
                    VersionInfo(name, v, self.uri_of(f"models/{name}/{v}"), complete, created)
                )
        return sorted(out, key=lambda i: (i.created, _version_key(i.version)))

    def manifest(self, name: str, version: str) -> dict[str, str] | None:
        data = self._read(f"models/{check_name('name', name)}/{version}/{MANIFEST}")
        return None if data is None else json.loads(data)

    def read_file(self, name: str, version: str, rel: str) -> bytes:
        manifest = self._need(name, version)
        if rel not in manifest:
            raise OptimusError(f"{name}@{version}: no file {rel!r} in the entry")
        data = self._read(f"models/{name}/{version}/{rel}")
        if data is None:
            raise OptimusError(f"{name}@{version}: {rel} is missing from the registry")
        return data

    def _need(self, name: str, version: str) -> dict[str, str]:
        check_name("name", name)
        check_name("version", version)
        manifest = self.manifest(name, version)
        if manifest is None:
            raise OptimusError(
                f"{self.uri_of(f'models/{name}/{version}')}: no such registered version"
            )
        return manifest

    def resolve(self, name: str, ref: str = "") -> str:
        """A version from ``ref``: a version, an alias, or empty (``latest``, else the
        newest version)."""
        check_name("name", name)
        if ref:
            check_name("version or alias", ref)
            if self.manifest(name, ref) is not None:
                return ref
            target, _ = self.get_alias(name, ref)
            if target is None:
                raise OptimusError(f"{name}@{ref}: no such version or alias in {self.uri}")
            return target
        target, _ = self.get_alias(name, "latest")
        if target:
            return target
        done = self.versions(name)
        if not done:
            raise OptimusError(f"{name}: no registered versions in {self.uri}")
        return done[-1].version

    def pull(self, name: str, version: str, dest: Path) -> list[Path]:
        """Download a version's files into ``dest``, checking every sha256."""
        manifest = self._need(name, version)
        dest = Path(dest)
        written = []
        for rel, digest in sorted(manifest.items()):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            self._download(f"models/{name}/{version}/{rel}", target)
            if sha256_file(target) != digest:
                raise OptimusError(f"{name}@{version}: {rel} does not match its manifest digest")
            written.append(target)
        return written

    # ---- aliases --------------------------------------------------------------------
    def get_alias(self, name: str, alias: str) -> tuple[str | None, Any]:
        """The version an alias points at (None if unset) and its generation token."""
        data, gen = self._read_gen(
            f"aliases/{check_name('name', name)}/{check_name('alias', alias)}.json"
        )
        return (None if data is None else json.loads(data)["version"]), gen

    def aliases(self, name: str) -> dict[str, str]:
        check_name("name", name)
        out = {}
        for key in sorted(self._list(f"aliases/{name}")):
            alias = key.rsplit("/", 1)[-1]
            if alias.endswith(".json"):
                target, _ = self.get_alias(name, alias[: -len(".json")])
                if target:
                    out[alias[: -len(".json")]] = target
        return out

    def set_alias(self, name: str, alias: str, version: str, expected: Any = None) -> str | None:
        """Point ``alias`` at a manifested version by compare-and-swap; returns the previous
        target. ``expected``: the generation read earlier (None: read it now). Raises
        :class:`Conflict` when another writer moved the alias in between."""
        manifest = self._need(name, version)
        if "metrics.json" in manifest:
            gate = json.loads(self.read_file(name, version, "metrics.json")).get("gate") or {}
            if not gate.get("passed"):
                raise OptimusError(f"{name}@{version}: did not pass its gates; alias not moved")
        previous, gen = self.get_alias(name, alias)
        if expected is not None:
            gen = expected
        record = {"name": name, "alias": alias, "version": version, "previous": previous,
                  "set_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
        self._swap(f"aliases/{name}/{alias}.json", _json(record), gen)
        return previous

    # ---- rejections -----------------------------------------------------------------
    def record_rejection(self, name: str, record: dict[str, Any]) -> str:
        """Write ``rejected/<name>/<stamp>-<id>/rejection.json`` (create-only); its folder URI."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        base = f"rejected/{check_name('name', name)}/{stamp}-{uuid.uuid4().hex[:8]}"
        self._create(f"{base}/rejection.json", _json(record))
        return base
