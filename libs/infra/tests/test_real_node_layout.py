"""The real nodes' layout from pools.yaml, and the OCI archives they import (pure)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from aion.infra.node import HOST_IP, node_labels, real_nodes
from aion.infra.paths import REPO

DOC: dict[str, Any] = {
    "poolLabel": "cloud.google.com/gke-nodepool",
    "pools": [{"name": "system", "nodes": 2, "instanceType": "e2", "cpu": "8", "memory": "1Gi"}],
    "realPools": [
        {"name": "workers", "nodes": 2, "instanceType": "local-real"},
        {"name": "spare", "nodes": 1},
    ],
}


def test_each_real_node_has_its_own_address_subnet_bridge_cgroup_and_folder() -> None:
    nodes = real_nodes(DOC, Path("/x"))
    assert [n.name for n in nodes] == ["workers-0", "workers-1", "spare-0"]
    assert [n.pool for n in nodes] == ["workers", "workers", "spare"]
    prefix = HOST_IP.rsplit(".", 1)[0]
    assert [n.ip for n in nodes] == [f"{prefix}.11", f"{prefix}.12", f"{prefix}.13"]
    assert HOST_IP not in {n.ip for n in nodes}
    assert [n.subnet for n in nodes] == ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]
    for attr in ("bridge", "cgroup", "root", "socket"):
        assert len({getattr(n, attr) for n in nodes}) == 3, attr
    assert all(len(n.bridge) <= 15 for n in nodes)  # Linux interface names
    assert nodes[0].root == Path("/x/workers-0")


def test_real_nodes_are_labelled_with_their_pool_and_as_real() -> None:
    node = real_nodes(DOC, Path("/x"))[0]
    labels = node_labels(DOC, node)
    assert labels["cloud.google.com/gke-nodepool"] == "workers"
    assert labels["type"] == "real"
    assert labels["node.kubernetes.io/instance-type"] == "local-real"
    assert not any("gpu" in k for k in labels)


def test_no_real_pools_means_no_real_nodes() -> None:
    assert real_nodes({"poolLabel": "x", "pools": []}, Path("/x")) == []


def test_oci_archive_is_a_named_image_layout_with_matching_digests(tmp_path: Path) -> None:
    binary = tmp_path / "hello"
    binary.write_bytes(b"#!/bin/true\n")
    out = tmp_path / "img.tar"
    script = REPO / "deploy" / "local" / "cluster" / "oci_image.py"
    cmd = [sys.executable, str(script), str(out), "localhost/aion/hello:1"]
    subprocess.run([*cmd, "--entrypoint", "/hello", f"{binary}=/hello"], check=True)
    with tarfile.open(out) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert name.rsplit("/", 1)[1] == hashlib.sha256(data).hexdigest()
    index = json.loads(files["index.json"])
    [desc] = index["manifests"]
    assert desc["annotations"]["io.containerd.image.name"] == "localhost/aion/hello:1"
    manifest = json.loads(files["blobs/" + desc["digest"].replace(":", "/")])
    config = json.loads(files["blobs/" + manifest["config"]["digest"].replace(":", "/")])
    assert config["config"]["Entrypoint"] == ["/hello"]
    layer = files["blobs/" + manifest["layers"][0]["digest"].replace(":", "/")]
    assert config["rootfs"]["diff_ids"] == [manifest["layers"][0]["digest"]]
    with tarfile.open(fileobj=io.BytesIO(layer)) as inner:
        member = inner.getmember("hello")
        assert member.mode == 0o755
        assert member.mtime == 0
