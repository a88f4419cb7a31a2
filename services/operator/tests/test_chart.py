"""The chart, the images and skaffold agree on names, ports and users."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest
import yaml

from aion.operator import render

ROOT = pathlib.Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "aion"
PORTS = {"gateway": 50051, "router": 50052, "agent": 50053, "knowledge": 50054, "executor": 50055}
SERVICES = [*PORTS, "operator"]


def _load(path: pathlib.Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def test_chart_metadata() -> None:
    chart = _load(CHART / "Chart.yaml")
    assert (chart["apiVersion"], chart["name"]) == ("v2", "aion")
    assert (chart["version"], chart["appVersion"]) == ("0.1.0", "0.1.0")


def test_values_ports_match_the_services() -> None:
    values = _load(CHART / "values.yaml")
    for name, port in PORTS.items():
        if name != "executor":
            assert values[name]["port"] == port
        # Where `make images` pushes them, the local cluster's registry.
        assert values[name]["image"]["repository"] == f"localhost:5000/aion/{name}"
    assert values["metrics"]["port"] == render.METRICS_PORT
    assert PORTS["executor"] == render.EXECUTOR_PORT
    assert values["operator"]["enabled"] is True


@pytest.mark.parametrize("name", SERVICES)
def test_dockerfile(name: str) -> None:
    text = (ROOT / "services" / name / "Dockerfile").read_text()
    # The service's own locked dependencies, then its packages as wheels (not editable).
    assert f"uv export --frozen --package aion-{name} --no-dev --no-emit-workspace" in text
    assert "USER 10001:10001" in text
    assert f'ENTRYPOINT ["/app/.venv/bin/python", "-m", "aion.{name}"]' in text
    assert f"AION_{name.upper()}_HOST=0.0.0.0" in text
    exposed = re.search(r"^EXPOSE (.+)$", text, re.MULTILINE)
    assert exposed is not None
    expected = {str(PORTS.get(name, 8080)), str(render.METRICS_PORT)}
    if name == "executor":  # its OpenAI-compatible HTTP API
        expected.add(str(render.HTTP_PORT))
    assert set(exposed.group(1).split()) == expected
    # The runtime stage adds aion's packages to the dependencies' stage and nothing else
    # of the build (no uv, no sources, no compilers).
    runtime = text.split(" AS runtime", 1)[1]
    assert re.findall(r"^COPY .*$", runtime, re.MULTILINE) == ["COPY --from=app /out/ /app/.venv/"]
    assert re.search(r"^FROM deps AS runtime$", text, re.MULTILINE)


def test_skaffold_builds_every_image_and_sets_it_in_the_chart() -> None:
    config = _load(ROOT / "skaffold.yaml")
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    repos = {name: f"localhost:5000/aion/{name}" for name in SERVICES}
    assert set(artifacts) == set(repos.values())
    for repo in repos.values():
        artifact = artifacts[repo]
        assert artifact["context"] == "."
        assert (ROOT / artifact["custom"]["dependencies"]["dockerfile"]["path"]).is_file()
    [release] = config["deploy"]["helm"]["releases"]
    assert release["chartPath"] == "charts/aion"
    assert "deploy/local/values-local.yaml" in release["valuesFiles"]
    templates = release["setValueTemplates"]
    for name, repo in repos.items():
        key = repo.replace(":", "_").replace("/", "_")
        assert templates[f"{name}.image.repository"] == f"{{{{.IMAGE_REPO_{key}}}}}"
        assert templates[f"{name}.image.tag"] == f"{{{{.IMAGE_TAG_{key}}}}}"


def test_each_crd_has_one_copy() -> None:
    copies = sorted(
        p
        for p in ROOT.glob("**/*.yaml")
        if ".venv" not in p.parts and "CustomResourceDefinition" in p.read_text()
    )
    assert copies == [
        CHART / "crds" / "agents.aion.dev.yaml",
        CHART / "crds" / "gpupools.aion.dev.yaml",
    ]


def _template_docs(path: pathlib.Path) -> list[dict[str, Any]]:
    """A template's documents with the Go template actions blanked out (enough to read rules)."""
    text = "\n".join(
        line
        for line in path.read_text().splitlines()
        if not re.fullmatch(r"\s*\{\{-?.*-?\}\}\s*", line)
    )
    text = re.sub(r"\{\{.*?\}\}", "x", text)
    return [d for d in yaml.safe_load_all(text) if d]


def test_operator_cluster_role_is_least_privilege() -> None:
    [role] = [
        d
        for d in _template_docs(CHART / "templates" / "operator-rbac.yaml")
        if d["kind"] == "ClusterRole"
    ]
    verbs: dict[str, set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                verbs.setdefault(f"{resource}.{group}".rstrip("."), set()).update(rule["verbs"])
    reads = {"get", "list", "watch"}
    assert verbs["nodes"] == reads
    assert verbs["pods"] == reads
    # GpuPools belong to the platform team: the operator only reads them and writes status.
    assert verbs["gpupools.aion.dev"] == reads
    assert verbs["gpupools/status.aion.dev"] == {"get", "patch", "update"}
    assert "*" not in {v for vs in verbs.values() for v in vs}
    assert all("*" not in rule["resources"] for rule in role["rules"])


def test_the_chart_names_executor_services_as_the_operator_does() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert 'printf "aion-executor-%s" . | replace "." "-"' in helpers
    assert render.executor_name("aion-embeddings") == "aion-executor-aion-embeddings"
