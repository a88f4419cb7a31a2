"""One suite for the protocol tests, its gateway serving HTTP (OpenAI, A2A, OpenAPI) with API
keys and JWTs on and anonymous access off, its rate limits in Postgres (so tests can read the
buckets); started once for the tests of this folder."""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from aion.infra import devstack

from .suite import API_KEYS, JWT_AUDIENCE, JWT_ISSUER, JWT_SECRET, HttpSuite


@pytest.fixture(scope="session")
def http_suite(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HttpSuite]:
    """The suite with the gateway's HTTP port and credentials on; its database is dropped."""
    # The e2e conftest's helpers (pytest imports it under this name), with the session
    # fixtures its Backbone takes, so this suite gets whatever backbone the shared one gets.
    e2e: Any = sys.modules["tests.e2e.conftest"]
    backbone = e2e.Backbone(
        *(request.getfixturevalue(name) for name in inspect.signature(e2e.Backbone).parameters)
    )
    http_port = devstack.free_port()
    try:
        env = backbone.env()
        dsn = env["AION_AGENT_POSTGRES_DSN"]
        suite = e2e.start_suite(
            tmp_path_factory.mktemp("http-suite"),
            {
                **env,
                "AION_GATEWAY_POSTGRES_DSN": dsn,
                "AION_GATEWAY_ALLOW_ANONYMOUS": "false",
                "AION_GATEWAY_API_KEYS": json.dumps(API_KEYS),
                "AION_GATEWAY_JWT_SECRET": JWT_SECRET,
                "AION_GATEWAY_JWT_AUDIENCE": JWT_AUDIENCE,
                "AION_GATEWAY_JWT_ISSUER": JWT_ISSUER,
                "AION_GATEWAY_HTTP_PORT": str(http_port),
                # The credential tests and the OpenAPI fuzz fail to authenticate from this
                # address on purpose, often: the tests after them must not be refused for it.
                "AION_GATEWAY_AUTH_FAILURES_PER_MIN": "10000",
            },
        )
        http = HttpSuite(suite, http_port, dsn)
        try:
            yield http
        finally:
            http.close()
            suite.stop()
    finally:
        backbone.drop_all()
