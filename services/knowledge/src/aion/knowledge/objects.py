"""Original documents in MinIO (or any S3): one bucket per install, a prefix per document.

Keys are ``<tenant>/<knowledge base>/<document>/<sha256>``, each part
percent-encoded, so the same bytes land on the same key (a repeated upload
rewrites nothing new) and one document's versions share a prefix that a
delete removes whole. The ``minio`` client is synchronous; its calls run in
threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Iterator
from urllib.parse import quote

import minio
import urllib3
from minio import deleteobjects
from minio import error as minio_error

from aion.core import errors

log = logging.getLogger(__name__)


def prefix(tenant: str, knowledge_base: str, document_id: str) -> str:
    """The folder of one document's originals."""
    return "/".join(quote(p, safe="") for p in (tenant, knowledge_base, document_id)) + "/"


def key(tenant: str, knowledge_base: str, document_id: str, sha256: str) -> str:
    """The key of one original."""
    return prefix(tenant, knowledge_base, document_id) + sha256


@contextlib.contextmanager
def _reachable(what: str) -> Iterator[None]:
    try:
        yield
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise errors.Unavailable(f"MinIO is unreachable while {what}: {exc}") from exc
    except minio_error.S3Error as exc:
        if exc.code == "NoSuchKey":
            raise errors.NotFound(f"the original is missing from MinIO: {exc.resource}") from exc
        raise errors.Unavailable(f"MinIO failed while {what}: {exc.code} {exc.message}") from exc
    except minio_error.ServerError as exc:
        raise errors.Unavailable(f"MinIO failed while {what}: {exc}") from exc


class ObjectStore:
    """Puts, gets and removes originals in one bucket."""

    def __init__(self, client: minio.Minio, bucket: str) -> None:
        self._client = client
        self.bucket = bucket

    @classmethod
    def connect(
        cls, endpoint: str, *, access_key: str, secret_key: str, bucket: str, secure: bool
    ) -> ObjectStore:
        """A store over a new client (no I/O yet)."""
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5.0, read=30.0),
            maxsize=16,
            retries=urllib3.Retry(
                total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        client = minio.Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, http_client=http
        )
        return cls(client, bucket)

    async def ensure_bucket(self) -> None:
        """Create the bucket when it is missing (another replica may race: that is fine)."""

        def create() -> None:
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket)
                except minio_error.S3Error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

        with _reachable("creating the bucket"):
            await asyncio.to_thread(create)

    async def put(self, object_key: str, content: bytes | io.BytesIO, content_type: str) -> int:
        """Store ``content`` (all of a BytesIO, from its start) under ``object_key``; its
        size in bytes."""
        data = content if isinstance(content, io.BytesIO) else io.BytesIO(content)
        size = data.seek(0, io.SEEK_END)
        data.seek(0)
        with _reachable("storing a document"):
            await asyncio.to_thread(
                self._client.put_object,
                self.bucket,
                object_key,
                data,
                size,
                content_type=content_type,
            )
        return size

    async def exists(self, object_key: str) -> bool:
        """Whether ``object_key`` holds an object."""

        def stat() -> bool:
            try:
                self._client.stat_object(self.bucket, object_key)
            except minio_error.S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject"):
                    return False
                raise
            return True

        with _reachable("looking up a document"):
            return await asyncio.to_thread(stat)

    async def get(self, object_key: str) -> bytes:
        """The bytes under ``object_key`` (NotFound when missing)."""

        def read() -> bytes:
            resp = self._client.get_object(self.bucket, object_key)
            try:
                return bytes(resp.read())
            finally:
                resp.close()
                resp.release_conn()

        with _reachable("reading a document"):
            return await asyncio.to_thread(read)

    async def keys(self, under: str) -> list[str]:
        """Every key under the prefix ``under``."""

        def listing() -> list[str]:
            return [
                str(o.object_name)
                for o in self._client.list_objects(self.bucket, prefix=under, recursive=True)
            ]

        with _reachable("listing documents"):
            return await asyncio.to_thread(listing)

    async def remove(self, object_keys: list[str]) -> None:
        """Remove these keys (missing ones are fine)."""
        if not object_keys:
            return

        def remove_all() -> None:
            failures = list(
                self._client.remove_objects(
                    self.bucket, [deleteobjects.DeleteObject(k) for k in object_keys]
                )
            )
            if failures:
                raise errors.Unavailable(f"MinIO kept {len(failures)} objects: {failures[0]}")

        with _reachable("removing documents"):
            await asyncio.to_thread(remove_all)

    async def remove_prefix(self, under: str) -> int:
        """Remove every key under ``under``; how many there were."""
        found = await self.keys(under)
        await self.remove(found)
        return len(found)
