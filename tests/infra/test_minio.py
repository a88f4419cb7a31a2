"""The local MinIO: objects go in and come back byte for byte, listings honour a
prefix, and a missing key is S3's NoSuchKey."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator

import pytest
from minio import Minio
from minio.error import S3Error

from aion.infra.minio import MinIO
from aion.infra.podnet import HOST_IP

pytestmark = pytest.mark.minio


@pytest.fixture
def client(minio: MinIO) -> Minio:
    return Minio(
        minio.endpoint, access_key=minio.access_key, secret_key=minio.secret_key, secure=False
    )


@pytest.fixture
def bucket(client: Minio) -> Iterator[str]:
    """A fresh bucket, emptied and removed afterwards."""
    name = f"aion-smoke-{uuid.uuid4().hex[:12]}"
    client.make_bucket(name)
    yield name
    for obj in client.list_objects(name, recursive=True):
        assert obj.object_name is not None
        client.remove_object(name, obj.object_name)
    client.remove_bucket(name)


def _put(client: Minio, bucket: str, key: str, data: bytes, content_type: str) -> None:
    client.put_object(bucket, key, io.BytesIO(data), length=len(data), content_type=content_type)


def _get(client: Minio, bucket: str, key: str) -> bytes:
    resp = client.get_object(bucket, key)
    try:
        return resp.read()
    finally:
        resp.close()
        resp.release_conn()


def test_endpoints(minio: MinIO) -> None:
    assert minio.endpoints() == {
        "AION_MINIO_POD_ENDPOINT": f"{HOST_IP}:{minio.port}",
        "AION_MINIO_ENDPOINT": f"127.0.0.1:{minio.port}",
        "AION_MINIO_ACCESS_KEY": minio.access_key,
        "AION_MINIO_SECRET_KEY": minio.secret_key,
    }
    # Pods on the real nodes reach it at the host's pod-facing address.
    pods = Minio(
        f"{HOST_IP}:{minio.port}",
        access_key=minio.access_key,
        secret_key=minio.secret_key,
        secure=False,
    )
    assert pods.bucket_exists(f"aion-absent-{uuid.uuid4().hex[:8]}") is False


def test_objects_round_trip_and_list_by_prefix(client: Minio, bucket: str) -> None:
    assert client.bucket_exists(bucket)
    # Every byte value, and more than one read buffer's worth of random data.
    binary = bytes(range(256)) + os.urandom(300_000)
    text = "résumé of run 1\n".encode()
    _put(client, bucket, "runs/1/output.bin", binary, "application/octet-stream")
    _put(client, bucket, "runs/1/summary.txt", text, "text/plain; charset=utf-8")

    assert _get(client, bucket, "runs/1/output.bin") == binary
    stat = client.stat_object(bucket, "runs/1/summary.txt")
    assert (stat.size, stat.content_type) == (len(text), "text/plain; charset=utf-8")

    listed = [o.object_name for o in client.list_objects(bucket, prefix="runs/1/")]
    assert sorted(n for n in listed if n is not None) == ["runs/1/output.bin", "runs/1/summary.txt"]
    assert [o.object_name for o in client.list_objects(bucket, prefix="runs/1/s")] == [
        "runs/1/summary.txt"
    ]
    assert list(client.list_objects(bucket, prefix="runs/2/")) == []
    # Without recursion a listing stops at the next "/".
    assert [(o.object_name, o.is_dir) for o in client.list_objects(bucket)] == [("runs/", True)]


def test_a_missing_key_is_no_such_key(client: Minio, bucket: str) -> None:
    with pytest.raises(S3Error) as caught:
        client.get_object(bucket, "runs/none/output.bin")
    assert caught.value.code == "NoSuchKey"
    assert caught.value.bucket_name == bucket
