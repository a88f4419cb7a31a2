"""Write a one-layer OCI image archive from local files, with no daemon or registry.

    oci_image.py OUT.tar NAME:TAG [--entrypoint PATH] [--user UID:GID] SRC=DEST...

The archive is an OCI image layout in a tar, as `ctr images import` reads it;
the index names the image NAME:TAG (containerd's io.containerd.image.name). The
layer is an uncompressed tar with fixed owners and times, so the same inputs
give the same digests.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
from pathlib import Path

LAYER = "application/vnd.oci.image.layer.v1.tar"
CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _layer(files: list[tuple[Path, str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for src, dest in files:
            data = src.read_bytes()
            info = tarfile.TarInfo(dest.lstrip("/"))
            info.size = len(data)
            info.mode = 0o755
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes, media_type: str) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def write(out: Path, name: str, files: list[tuple[Path, str]], entrypoint: str, user: str) -> None:
    layer = _layer(files)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": [entrypoint], "User": user, "Env": [f"PATH={PATH}"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]},
    }
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        layer_desc = _blob(tar, layer, LAYER)
        config_desc = _blob(tar, json.dumps(config, sort_keys=True).encode(), CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config_desc,
            "layers": [layer_desc],
        }
        manifest_desc = _blob(tar, json.dumps(manifest, sort_keys=True).encode(), MANIFEST)
        tag = name.rsplit(":", 1)[1]
        manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
        manifest_desc["annotations"] = {
            "io.containerd.image.name": name,
            "org.opencontainers.image.ref.name": tag,
        }
        index = {"schemaVersion": 2, "manifests": [manifest_desc]}
        for fname, data in (
            ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
            ("index.json", json.dumps(index, sort_keys=True).encode()),
        ):
            info = tarfile.TarInfo(fname)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("name", help="NAME:TAG")
    parser.add_argument("--entrypoint", required=True)
    parser.add_argument("--user", default="65534:65534")
    parser.add_argument("files", nargs="+", help="SRC=DEST")
    args = parser.parse_args()
    files = [(Path(f.split("=", 1)[0]), f.split("=", 1)[1]) for f in args.files]
    write(args.out, args.name, files, args.entrypoint, args.user)


if __name__ == "__main__":
    main()
