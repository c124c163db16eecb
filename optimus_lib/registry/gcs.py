"""The ``gs://bucket/prefix`` backend, through google-cloud-storage (imported here only).

* Every object is written create-only (``if_generation_match=0``): GCS answers 412 when it
  exists, so nothing in a version is ever overwritten. Uploads go through
  ``upload_from_string`` / ``upload_from_filename`` without ``chunk_size``: simple or
  multipart requests up to 8 MiB, resumable above. Real GCS applies the precondition to
  resumable uploads too; the test stand-in (fake-gcs-server) only to simple and multipart
  ones, so the tests use small objects.
* Aliases move by compare-and-swap: the generation read with the alias is the
  ``if_generation_match`` of its replacement.
* Authentication: application default credentials (Workload Identity on GKE, ``gcloud
  auth application-default login`` on a laptop). Anonymous credentials only when
  ``STORAGE_EMULATOR_HOST`` points the client at an emulator. There is no key-file option.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from optimus_lib.errors import OptimusError
from optimus_lib.registry.base import Conflict, Exists, ModelRegistry


class GCSRegistry(ModelRegistry):
    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        bucket, _, prefix = uri[len("gs://") :].partition("/")
        if not bucket:
            raise OptimusError(f"{uri}: give a bucket (gs://bucket/prefix)")
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self._client = None
        self._bucket = None

    # ---- client -----------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            try:
                from google.cloud import storage
            except ImportError:
                raise OptimusError(
                    f"{self.uri}: the GCS backend needs google-cloud-storage "
                    "(pip install 'optimus-defense[gcs]')"
                ) from None
            import google.auth.exceptions

            try:
                if os.environ.get("STORAGE_EMULATOR_HOST"):
                    from google.auth.credentials import AnonymousCredentials

                    self._client = storage.Client(
                        project=os.environ.get("GOOGLE_CLOUD_PROJECT", "optimus-emulator"),
                        credentials=AnonymousCredentials(),
                    )
                else:
                    self._client = storage.Client()  # application default credentials
            except google.auth.exceptions.DefaultCredentialsError:
                raise OptimusError(
                    f"{self.uri}: no Google Cloud credentials (use Workload Identity or "
                    "`gcloud auth application-default login`)"
                ) from None
        return self._client

    @property
    def bucket(self):
        if self._bucket is None:
            self._bucket = self.client.bucket(self.bucket_name)
        return self._bucket

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri_of(self, key: str) -> str:
        return f"gs://{self.bucket_name}/{self._name(key)}"

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Storage errors as one line; a 404 on a write or a listing means the bucket."""
        from google.api_core import exceptions as gexc

        try:
            yield
        except gexc.PreconditionFailed:
            raise  # the callers' create-only and compare-and-swap answers
        except gexc.NotFound:
            raise OptimusError(
                f"gs://{self.bucket_name}: bucket not found (or not visible to these credentials)"
            ) from None
        except gexc.Forbidden as exc:
            raise OptimusError(f"{self.uri_of(key)}: permission denied ({exc.message})") from None
        except gexc.GoogleAPICallError as exc:
            raise OptimusError(f"{self.uri_of(key)}: {exc.code} {exc.message}") from None

    # ---- primitives -------------------------------------------------------------------
    def _create(self, key: str, data: bytes) -> None:
        from google.api_core.exceptions import PreconditionFailed

        blob = self.bucket.blob(self._name(key))
        try:
            with self._errors(key):
                blob.upload_from_string(data, if_generation_match=0)
        except PreconditionFailed:
            raise Exists(key) from None

    def _create_file(self, key: str, src: Path) -> None:
        from google.api_core.exceptions import PreconditionFailed

        blob = self.bucket.blob(self._name(key))
        try:
            with self._errors(key):
                blob.upload_from_filename(str(src), if_generation_match=0)
        except PreconditionFailed:
            raise Exists(key) from None

    def _read(self, key: str) -> bytes | None:
        return self._read_gen(key)[0]

    def _read_gen(self, key: str) -> tuple[bytes | None, Any]:
        from google.api_core.exceptions import GoogleAPICallError, NotFound, PreconditionFailed

        for _ in range(5):
            try:
                blob = self.bucket.get_blob(self._name(key))  # None: no object (or bucket)
                if blob is None:
                    return None, 0
                data = blob.download_as_bytes(if_generation_match=blob.generation)
                return data, blob.generation
            except (PreconditionFailed, NotFound):
                continue  # replaced or deleted between the two requests: read again
            except GoogleAPICallError as exc:
                raise OptimusError(f"{self.uri_of(key)}: {exc.code} {exc.message}") from None
        raise OptimusError(f"{self.uri_of(key)}: keeps changing while being read")

    def _swap(self, key: str, data: bytes, generation: Any) -> None:
        from google.api_core.exceptions import PreconditionFailed

        blob = self.bucket.blob(self._name(key))
        try:
            with self._errors(key):
                blob.upload_from_string(
                    data, content_type="application/json", if_generation_match=int(generation)
                )
        except PreconditionFailed:
            raise Conflict(f"{self.uri_of(key)}: changed since it was read; not moved") from None

    def _list(self, prefix: str) -> dict[str, float]:
        start = len(self._name(""))
        with self._errors(prefix):
            return {
                b.name[start:]: _when(b)
                for b in self.client.list_blobs(self.bucket_name, prefix=self._name(prefix) + "/")
            }

    def _dirs(self, prefix: str) -> list[str]:
        with self._errors(prefix):
            it = self.client.list_blobs(
                self.bucket_name, prefix=self._name(prefix) + "/", delimiter="/"
            )
            for _ in it.pages:
                pass
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in it.prefixes)

    def _download(self, key: str, dest: Path) -> None:
        with self._errors(key):
            self.bucket.blob(self._name(key)).download_to_filename(str(dest))


def _when(blob) -> float:
    t = blob.time_created or blob.updated
    return t.timestamp() if t else 0.0
