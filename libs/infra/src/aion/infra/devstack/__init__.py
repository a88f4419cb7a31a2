"""Run aion on one machine: the five services as local processes (``make dev``, tests).

``python -m aion.infra.devstack`` is ``make dev``: it starts the services
against ``make infra-up``'s Postgres, Kafka and MinIO (and the operator, given
a kubeconfig) and keeps them up until Ctrl-C. ``LocalSuite`` does the same for
the end-to-end tests and benches; ``free_port`` and ``health_status`` help
tests that start a single service. This is local tooling: shipped code never
imports it (``.importlinter``), and SDK users test against
``aion.sdk.testing.FakeGateway`` instead.

Modules: ``suite`` (the processes, their ports, environment and certificates),
``__main__`` (the ``make dev`` command line: progress, the operator, Ctrl-C).
"""

from aion.infra.devstack.suite import (
    LocalSuite,
    ServiceProcess,
    SuiteError,
    free_port,
    health_status,
)

__all__ = ["LocalSuite", "ServiceProcess", "SuiteError", "free_port", "health_status"]
