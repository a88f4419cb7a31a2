"""The router's composition root: ``python -m aion.router``."""

from __future__ import annotations

from aion.api.router.v1 import router_pb2, router_pb2_grpc
from aion.core import authz, lifecycle, server, settings, telemetry, tls
from aion.router import policy, servicer
from aion.router import settings as router_settings

SERVICE = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name
# Who may call each RPC (their certificates' identities).
ALLOW = authz.methods(SERVICE, {"Decide": {"gateway"}})


async def run(cfg: router_settings.RouterSettings, material: tls.Tls) -> None:
    """Serve until SIGTERM or SIGINT, then drain."""
    policies = policy.PolicySource(cfg.policy_file)
    grpc_server = server.GrpcServer.serving(
        "router", cfg, tls=material, allow=ALLOW, health_port=cfg.health_port
    )
    grpc_server.add(
        router_pb2_grpc.add_RouterServicer_to_server, servicer.RouterServicer(policies), SERVICE
    )
    await lifecycle.serve(grpc_server, host=cfg.host, metrics_port=cfg.metrics_port)


def main() -> None:
    """Entry point."""
    cfg = settings.load(router_settings.RouterSettings)
    material = tls.load()
    telemetry.setup(service="router", log_level=cfg.log_level, otlp_endpoint=cfg.otlp_endpoint)
    lifecycle.freeze_heap()
    lifecycle.run(run(cfg, material))
