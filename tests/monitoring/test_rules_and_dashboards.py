"""The chart's Prometheus rules and Grafana dashboards, checked without a cluster.

promtool (built from the Prometheus Go module by deploy/local/build.sh) checks
charts/aion/files/prometheus/rules.yaml and runs its unit tests (rules_test.yaml
beside this file: input series, recording rules' values, each alert firing above
its threshold after its `for:` and quiet below it). The rules read only metrics the
services export, by their exported names; the dashboards query only those
recording rules (and `up`), and show every one of them.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from aion.infra.component import InfraError
from aion.infra.paths import REPO, Layout
from aion.infra.prometheus import Prometheus
from aion.infra.tools import ensure_built

FILES = REPO / "charts" / "aion" / "files"
RULES = FILES / "prometheus" / "rules.yaml"
RULES_TEST = Path(__file__).parent / "rules_test.yaml"
DASHBOARDS = sorted((FILES / "grafana").glob("*.json"))

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def promtool() -> Path:
    """promtool, built with Prometheus at the pinned version (cached in the aion cache)."""
    try:
        ensure_built(Prometheus.build_target)
    except InfraError as exc:
        pytest.fail(str(exc), pytrace=False)
    return Prometheus(Layout.from_env()).promtool


def _promtool(promtool: Path, *args: str) -> str:
    proc = subprocess.run(
        [str(promtool), *args], capture_output=True, text=True, check=False, timeout=120
    )
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _rules() -> list[Doc]:
    groups: list[Doc] = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _records() -> set[str]:
    return {rule["record"] for rule in _rules() if "record" in rule}


def test_promtool_checks_the_rules(promtool: Path) -> None:
    out = _promtool(promtool, "check", "rules", str(RULES))
    assert f"SUCCESS: {len(_rules())} rules found" in out, out


def test_the_rules_unit_tests_pass(promtool: Path) -> None:
    out = _promtool(promtool, "test", "rules", str(RULES_TEST))
    assert "SUCCESS" in out, out


def test_every_alert_is_tested_firing_and_quiet_and_says_what_to_do() -> None:
    alerts = [rule for rule in _rules() if "alert" in rule]
    assert {a["alert"] for a in alerts} >= {
        "AionServiceDown",
        "AionOutboxLagGrowing",
        "AionExecutorQueueSaturated",
        "AionTaskErrorRatioHigh",
    }
    cases = [
        case
        for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for alert in alerts:
        name = alert["alert"]
        assert re.fullmatch(r"[0-9]+m", alert["for"]), name
        assert alert["labels"]["severity"] in ("critical", "warning"), name
        assert alert["annotations"]["summary"], name
        assert alert["annotations"]["description"], name
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name} is never tested firing"
        assert any(not case["exp_alerts"] for case in mine), f"{name} is never tested quiet"


def test_recording_rules_are_named_level_metric_operations() -> None:
    records = [rule["record"] for rule in _rules() if "record" in rule]
    assert len(records) == len(set(records))
    for record in records:
        assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", record), record


# Identifiers that are PromQL's own words, not series.
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}


def series_names(expr: str) -> set[str]:
    """The metric (or recording rule) names a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() not in _KEYWORDS:
            names.add(match.group())
    return names


def test_series_names_reads_past_functions_groupings_and_matchers() -> None:
    expr = 'sum by (le) (rate(x_bucket{a="b}"}[5m])) / on() group_left y:z:w * 1e-3 or vector(0)'
    assert series_names(expr) == {"x_bucket", "y:z:w"}
    assert series_names("label_values(agent:q:sum, agent)") == {"agent:q:sum", "agent"}


def _exported() -> set[str]:
    """Every series name the services' metrics export (counters as <name>_total,
    histograms as their _bucket, _sum and _count)."""
    import prometheus_client

    from aion.agent import metrics as agent_metrics
    from aion.core import metrics as core_metrics
    from aion.executor import stats as executor_stats
    from aion.gateway import metrics as gateway_metrics

    # Importing them registered their metrics.
    assert all((agent_metrics, core_metrics, executor_stats, gateway_metrics))
    names = set()
    for family in prometheus_client.REGISTRY.collect():
        match family.type:
            case "counter":
                names.add(f"{family.name}_total")
            case "histogram":
                names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count")}
            case _:
                names.add(family.name)
    return names


def test_the_rules_read_only_series_the_services_export() -> None:
    exported = _exported() | {"up"}
    records = _records()
    for rule in _rules():
        raw = {n for n in series_names(rule["expr"]) if n not in records}
        assert raw <= exported, (rule.get("record", rule.get("alert")), raw - exported)


def _panels(dashboard: Doc) -> list[Doc]:
    panels: list[Doc] = []
    for panel in dashboard["panels"]:
        panels += [panel, *panel.get("panels", [])]
    return panels


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_a_dashboard_queries_only_the_recording_rules(path: Path) -> None:
    dashboard: Doc = json.loads(path.read_text())
    assert dashboard["uid"], path
    assert dashboard["title"], path
    assert dashboard["panels"], path
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    allowed = _records() | {"up"}
    for variable in variables.values():
        if variable["type"] == "query":
            names = series_names(variable["query"]["query"]) - {variable["name"]}
            assert names, variable["name"]
            assert names <= allowed, (variable["name"], names)
    panels = _panels(dashboard)
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in (p for p in panels if p["type"] != "row"):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["description"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = series_names(target["expr"])
            assert names, panel["title"]
            assert names <= allowed, (panel["title"], names - allowed)


def test_the_dashboards_show_every_recording_rule() -> None:
    shown = {
        name
        for path in DASHBOARDS
        for panel in _panels(json.loads(path.read_text()))
        for target in panel.get("targets", [])
        for name in series_names(target["expr"])
    }
    assert DASHBOARDS
    assert _records() <= shown, sorted(_records() - shown)
