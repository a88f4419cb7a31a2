"""`make images`: every service's image is built from its Dockerfile by buildah on
the Debian base images and sits in the local registry; images run as a non-root
user with the service's entrypoint; the gateway image holds the gateway and not
the other services; an unchanged service is not rebuilt.

The session builds through the same cached path as `make images`: warm, it only
hashes the inputs and asks the registry (seconds); cold, it builds everything
(the executor's torch layer is most of it). A missing builder fails the tests.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from aion.infra import images
from aion.infra.component import InfraError
from aion.infra.oci_registry import ImageRegistry, RegistryClient
from aion.infra.paths import Layout

# A cold machine builds the base images and all six service images here.
pytestmark = pytest.mark.timeout(3600)

SITE = "app/.venv/lib/python3.11/site-packages/aion/"


@pytest.fixture(scope="module")
def built() -> Iterator[dict[str, images.Built]]:
    layout = Layout.from_env()
    registry = ImageRegistry(layout)
    was_running = registry.running() and registry.ready()
    try:
        result = images.build(images.SERVICES, layout)
    except InfraError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield {b.service: b for b in result}
    if not was_running and os.environ.get("AION_INFRA_KEEP") != "1":
        registry.down()


@pytest.fixture(scope="module")
def client() -> RegistryClient:
    return ImageRegistry(Layout.from_env()).client


def _files(client: RegistryClient, name: str, tag: str, skip_layers: int) -> set[str]:
    """The paths in an image's layers, the first `skip_layers` (the base) left out."""
    manifest = client.manifest(name, tag)
    out: set[str] = set()
    for layer in manifest["layers"][skip_layers:]:
        blob = client.blob(name, layer["digest"])
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
            out.update(m.name.removeprefix("./") for m in tar.getmembers())
    return out


def test_every_service_image_is_in_the_registry(
    built: dict[str, images.Built], client: RegistryClient
) -> None:
    assert set(built) == set(images.SERVICES)
    for service, image in built.items():
        name = f"aion/{service}"
        assert image.reference == f"{image.repository}:{image.tag}"
        assert image.repository.endswith(f"/{name}")
        assert image.tag in client.tags(name), f"{image.reference} is not in the registry"
        manifest = client.manifest(name, image.tag)
        assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        # The base layer, the user, the dependencies and aion's own packages at least.
        assert len(manifest["layers"]) >= 4, manifest["layers"]
        assert image.size_mb > 20


def test_images_run_as_non_root_with_the_service_entrypoint(
    built: dict[str, images.Built], client: RegistryClient
) -> None:
    for service, image in built.items():
        config = client.config(f"aion/{service}", image.tag)["config"]
        user = config.get("User", "")
        assert user == "10001:10001", f"{service}: user {user!r}"
        assert config["Entrypoint"] == ["/app/.venv/bin/python", "-m", f"aion.{service}"]
        assert config.get("WorkingDir") == "/app"
        assert any(e.startswith("PATH=/app/.venv/bin:") for e in config["Env"])


def test_the_gateway_image_holds_the_gateway_and_not_the_other_services(
    built: dict[str, images.Built], client: RegistryClient
) -> None:
    files = _files(client, "aion/gateway", built["gateway"].tag, skip_layers=1)
    for own in ("gateway", "core", "api"):
        assert f"{SITE}{own}/__init__.py" in files, f"aion.{own} missing from the gateway image"
    others = ("router", "agent", "knowledge", "executor", "operator", "sdk", "infra")
    leaked = sorted(f for f in files for o in others if f.startswith(f"{SITE}{o}/"))
    assert not leaked, leaked[:10]
    # No workspace sources (only the lock and the members' pyproject.toml), no uv.
    assert not [f for f in files if f.startswith("src/") and f.endswith(".py")]
    assert "usr/local/bin/uv" not in files


def test_executor_dependencies_and_code_are_separate_layers(
    built: dict[str, images.Built], client: RegistryClient
) -> None:
    """One executor image for embeddings and generation; a code change rebuilds only
    its small top layer, never the torch layer under it."""
    image = built["executor"]
    layers = client.manifest("aion/executor", image.tag)["layers"]
    mib = [layer["size"] / 2**20 for layer in layers]
    assert mib[-1] < 5, f"aion's own packages should be a small top layer: {mib}"
    assert max(mib) > 500, f"torch and llama.cpp should be one large layer: {mib}"
    assert mib.index(max(mib)) == len(mib) - 2, mib
    top = _files(client, "aion/executor", image.tag, skip_layers=len(layers) - 1)
    assert f"{SITE}executor/__init__.py" in top
    assert not [f for f in top if "site-packages/torch/" in f]


def test_an_unchanged_service_is_not_rebuilt(built: dict[str, images.Built]) -> None:
    started = time.monotonic()
    again = images.build(["gateway", "router"])
    seconds = time.monotonic() - started
    assert [b.built for b in again] == [False, False]
    assert [b.tag for b in again] == [built["gateway"].tag, built["router"].tag]
    assert seconds < 60, f"a warm build took {seconds:.1f}s"


def test_the_chart_values_name_every_image(built: dict[str, images.Built], tmp_path: Path) -> None:
    path = images.write_values(list(built.values()), tmp_path / "values-images.yaml")
    values = yaml.safe_load(path.read_text())
    for service, image in built.items():
        assert values[service]["image"] == {"repository": image.repository, "tag": image.tag}


def test_the_tag_follows_the_files_the_dockerfile_copies(tmp_path: Path) -> None:
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "mod.py").write_text("x = 1\n")
    (tmp_path / "other.txt").write_text("not copied\n")
    (tmp_path / ".dockerignore").write_text("**/__pycache__\n")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM base AS b\nCOPY src /src\nCOPY --from=b /x /y\nRUN true\n")
    args = {"PYTHON_IMAGE": "base:1"}
    first = images.content_tag(dockerfile, tmp_path, args)
    (tmp_path / "other.txt").write_text("changed, but not copied\n")
    (tmp_path / "src" / "pkg" / "__pycache__").mkdir()
    (tmp_path / "src" / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    assert images.content_tag(dockerfile, tmp_path, args) == first
    (tmp_path / "src" / "pkg" / "mod.py").write_text("x = 2\n")
    second = images.content_tag(dockerfile, tmp_path, args)
    assert second != first
    assert images.content_tag(dockerfile, tmp_path, {"PYTHON_IMAGE": "base:2"}) != second


def test_the_gateway_image_runs_its_service_as_the_aion_user(
    built: dict[str, images.Built],
) -> None:
    layout = Layout.from_env()
    builder = images.Builder(layout, ImageRegistry(layout))
    code = "import os, aion.gateway.main as m; print(os.getuid(), m.__file__)"
    out = builder.run(built["gateway"].reference, "python", "-c", code, user="10001:10001")
    assert out.splitlines()[-1] == f"10001 /{SITE}gateway/main.py"
