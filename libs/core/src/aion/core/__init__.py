"""Shared runtime of aion's services.

Import the modules, not their names: ``from aion.core import errors``.

- ``settings``: the pydantic-settings base every service's settings extend.
- ``errors``: the one error tree and its mapping to and from gRPC statuses.
- ``server``: a grpc.aio server with health, reflection and the error interceptor.
- ``lifecycle``: run until SIGTERM/SIGINT, then drain.
- ``metrics``: Prometheus metrics and their HTTP endpoint.
- ``telemetry``: OpenTelemetry tracing and JSON logs with trace ids.
"""

__all__: list[str] = []
