"""The local-folder backend: exclusive creates, an exclusive ``mkdir`` claims a version,
aliases are replaced by atomic rename under a lock file (compare-and-swap on content)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from optimus_lib.registry.base import Conflict, Exists, ModelRegistry, sha256_bytes


class LocalRegistry(ModelRegistry):
    def __init__(self, uri: str):
        self.uri = uri
        self.root = Path(uri.removeprefix("file://")).expanduser()

    def _path(self, key: str) -> Path:
        return self.root / key

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def uri_of(self, key: str) -> str:
        return self._path(key).resolve().as_uri()

    def _create(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with path.open("xb") as fh:
                fh.write(data)
        except FileExistsError:
            raise Exists(key) from None

    def _create_file(self, key: str, src: Path) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with path.open("xb") as out, Path(src).open("rb") as inp:
                shutil.copyfileobj(inp, out, 1 << 20)
        except FileExistsError:
            raise Exists(key) from None

    def _claim(self, key: str, data: bytes) -> None:
        folder = self._path(key).parent  # the version folder: an exclusive mkdir claims it
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir()
        except FileExistsError:
            raise Exists(key) from None
        self._create(key, data)

    def _read(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _read_gen(self, key: str) -> tuple[bytes | None, Any]:
        data = self._read(key)
        return data, (0 if data is None else sha256_bytes(data))

    def _swap(self, key: str, data: bytes, generation: Any) -> None:
        from filelock import FileLock

        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if self._read_gen(key)[1] != generation:
                raise Conflict(f"{self.uri_of(key)}: changed since it was read; not moved")
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)

    def _list(self, prefix: str) -> dict[str, float]:
        base = self._path(prefix)
        if not base.is_dir():
            return {}
        out = {}
        for p in base.rglob("*"):
            if p.is_file() and not p.name.endswith((".lock", ".tmp")):
                out[p.relative_to(self.root).as_posix()] = p.stat().st_mtime_ns / 1e9
        return out

    def _dirs(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        return [p.name for p in base.iterdir() if p.is_dir()] if base.is_dir() else []

    def _download(self, key: str, dest: Path) -> None:
        shutil.copyfile(self._path(key), dest)
