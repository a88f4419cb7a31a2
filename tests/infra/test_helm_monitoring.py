"""The chart's monitoring objects, rendered by Helm built from its Go module: PodMonitors
for every pod's `metrics` port (the platform's and the executors'), a PrometheusRule
that is files/prometheus/rules.yaml as it is, and the Grafana dashboards' ConfigMap
for the sidecar. All off by default."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from aion.infra.paths import REPO

pytestmark = pytest.mark.helm

CHART = REPO / "charts" / "aion"
RELEASE, NAMESPACE = "aion", "aion"
COMPONENTS = {"gateway", "router", "agent", "knowledge", "operator"}
MONITORING = ("PodMonitor", "PrometheusRule")
ON = [
    "--set",
    "monitoring.podMonitor.enabled=true",
    "--set",
    "monitoring.prometheusRule.enabled=true",
    "--set",
    "monitoring.dashboards.enabled=true",
]

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def run(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Runs the built Helm away from the user's config, cache and cluster."""
    home = tmp_path_factory.mktemp("helm-home")
    env = {**os.environ, **{v: str(home / v) for v in ("HELM_CONFIG_HOME", "HELM_CACHE_HOME")}}
    env["HELM_DATA_HOME"] = str(home / "data")
    env.pop("KUBECONFIG", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(helm), *args], capture_output=True, text=True, check=False, timeout=120, env=env
        )

    return run


def _template(run: Any, *args: str) -> list[Doc]:
    proc = run("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _dashboards(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] == "ConfigMap" and "dashboards" in d["metadata"]["name"]]


def test_monitoring_is_off_by_default(run: Any) -> None:
    docs = _template(run)
    assert not [d for d in docs if d["kind"] in MONITORING]
    assert not _dashboards(docs)


def test_helm_lint_passes_with_monitoring_on(run: Any) -> None:
    proc = run("lint", str(CHART), "--strict", "--namespace", NAMESPACE, *ON)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


def _pods(docs: list[Doc]) -> list[Doc]:
    return [d["spec"]["template"] for d in docs if d["kind"] == "Deployment"]


def _port_names(pod: Doc) -> set[str]:
    return {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}


def test_the_platform_pod_monitor_scrapes_every_services_metrics_port_as_its_job(
    run: Any,
) -> None:
    docs = _template(run, *ON, "--set-json", 'monitoring.podMonitor.labels={"release":"kps"}')
    [monitor] = [d for d in docs if d["kind"] == "PodMonitor" and d["metadata"]["name"] == RELEASE]
    assert monitor["metadata"]["labels"]["release"] == "kps"
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = spec["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == (
        "metrics",
        "/metrics",
        "30s",
    )
    selected = [
        pod
        for pod in _pods(docs)
        if spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ]
    jobs = {pod["metadata"]["labels"][spec["jobLabel"]] for pod in selected}
    assert jobs == COMPONENTS  # the jobs files/prometheus/rules.yaml names
    for pod in selected:
        assert endpoint["port"] in _port_names(pod), pod["metadata"]["labels"]


def test_the_executor_pod_monitor_selects_the_operators_executor_pods(run: Any) -> None:
    from aion.operator import render

    docs = _template(run, *ON)
    [monitor] = [d for d in docs if d["metadata"]["name"] == f"{RELEASE}-executors"]
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    # The labels and ports the operator gives an Agent's executor pods.
    labels = render.labels("chat")
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert labels[spec["jobLabel"]] == "executor"
    [endpoint] = spec["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["relabelings"] == [
        {"sourceLabels": ["__meta_kubernetes_pod_label_aion_dev_agent"], "targetLabel": "agent"}
    ]
    assert "aion.dev/agent" in labels  # the pod label that relabeling reads

    confined = _template(run, *ON, "--set-json", 'operator.watchNamespaces=["team-a","team-b"]')
    [monitor] = [d for d in confined if d["metadata"]["name"] == f"{RELEASE}-executors"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    off = _template(run, *ON, "--set", "monitoring.podMonitor.executors=false")
    assert [d["metadata"]["name"] for d in off if d["kind"] == "PodMonitor"] == [RELEASE]


def test_the_prometheus_rule_is_the_rules_file_as_it_is(run: Any) -> None:
    docs = _template(run, *ON, "--set-json", 'monitoring.prometheusRule.labels={"role":"alerts"}')
    [rule] = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["metadata"]["labels"]["role"] == "alerts"
    rules_file = CHART / "files" / "prometheus" / "rules.yaml"
    assert rule["spec"] == yaml.safe_load(rules_file.read_text())
    # Alert templates reach Prometheus untouched by Helm.
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert "{{ $labels.job }}" in alerts["AionServiceDown"]["annotations"]["summary"]


def test_the_dashboards_configmap_carries_the_sidecars_label_and_every_dashboard(
    run: Any,
) -> None:
    [configmap] = _dashboards(_template(run, *ON))
    assert configmap["metadata"]["namespace"] == NAMESPACE
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboards = sorted((CHART / "files" / "grafana").glob("*.json"))
    assert dashboards
    assert configmap["data"] == {p.name: p.read_text() for p in dashboards}

    [custom] = _dashboards(
        _template(
            run,
            *ON,
            "--set",
            "monitoring.dashboards.label=grafana_dashboards",
            "--set",
            "monitoring.dashboards.labelValue=aion",
            "--set",
            "monitoring.dashboards.namespace=monitoring",
            "--set",
            "monitoring.dashboards.annotations.grafana_folder=aion",
        )
    )
    assert custom["metadata"]["labels"]["grafana_dashboards"] == "aion"
    assert "grafana_dashboard" not in custom["metadata"]["labels"]
    assert custom["metadata"]["namespace"] == "monitoring"
    assert custom["metadata"]["annotations"] == {"grafana_folder": "aion"}


@pytest.mark.parametrize(
    ("flag", "fragment"),
    [
        ("monitoring.podMonitor.interval=often", "'/monitoring/podMonitor/interval'"),
        ("monitoring.podMonitor.enabled=yes", "'/monitoring/podMonitor/enabled'"),
        ("monitoring.dashboards.lable=x", "additional properties 'lable'"),
        ("monitoring.prometheusRules.enabled=true", "additional properties 'prometheusRules'"),
    ],
)
def test_bad_monitoring_values_are_refused_naming_the_field(
    run: Any, flag: str, fragment: str
) -> None:
    proc = run("template", RELEASE, str(CHART), "--set", flag)
    assert proc.returncode != 0, proc.stdout[:2000]
    assert fragment in proc.stderr, proc.stderr
