"""Every AION_<SERVICE>_* variable a service is given is one its settings read.

Each service refuses, at start, a variable with its prefix that no setting
reads, naming it; and what the operator sets on executor pods is all read
by the executor. (The chart's variables are checked in tests/infra/test_helm.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aion.core import agentspec, settings
from aion.executor import settings as executor_settings
from aion.operator import render
from aion.operator import settings as operator_settings

SERVICES = ("gateway", "router", "agent", "knowledge", "executor", "operator")


@pytest.mark.parametrize("service", SERVICES)
def test_an_unknown_variable_stops_the_service_at_start_naming_it(service: str) -> None:
    prefix = f"AION_{service.upper()}_"
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefix)}
    env[prefix + "GRACE_SECONDS"] = "5"  # the setting is GRACE_S
    proc = subprocess.run(
        [sys.executable, "-m", f"aion.{service}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert f"{prefix}GRACE_SECONDS: no such setting; did you mean {prefix}GRACE_S" in (
        proc.stderr
    ), proc.stderr[-2000:]


def test_the_operator_sets_only_variables_the_executor_reads() -> None:
    kafka = operator_settings.ExecutorKafka.model_validate(
        {
            "securityProtocol": "SASL_SSL",
            "sasl": {"existingSecret": "kafka-user"},
            "tls": {"existingSecret": "kafka-ca", "clientCertificate": True},
        }
    )
    cfg = operator_settings.AionOperatorSettings(
        executor_image="aion-executor:1",
        kafka_bootstrap="kafka:9092",
        otlp_endpoint="http://otel:4317",
        executor_kafka=kafka,
    )
    agent = agentspec.parse(
        {"model": {"name": "m", "source": "/models/m.gguf"}, "gpu": {"count": 1}}
    )
    deployment = render.executor_deployment(
        "chat",
        "team-a",
        agent,
        pool_label="aion.dev/node-pool",
        pool="l4",
        image=cfg.executor_image,
        owner=render.Owner(name="chat", uid="u"),
        env=render.executor_env(cfg),
        kafka=cfg.executor_kafka,
    )
    # Secrets come through valueFrom (the HTTP token): their names count as set.
    env = {
        e["name"]: e.get("value", "")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert {
        "AION_EXECUTOR_KAFKA_BOOTSTRAP",
        "AION_EXECUTOR_OTLP_ENDPOINT",
        "AION_EXECUTOR_MODEL_SOURCE",
        "AION_EXECUTOR_HOST",
        "AION_EXECUTOR_KAFKA_SASL_PASSWORD",
        "AION_EXECUTOR_KAFKA_SSL_KEYFILE",
    } <= set(env)
    assert settings.unknown_variables(executor_settings.ExecutorSettings, env) == []
