"""Where pods on the local cluster's real nodes reach the services of this machine.

The real nodes (aion.infra.node) put HOST_IP on the loopback interface. Kafka,
Postgres and MinIO listen there too, beside 127.0.0.1, so that the chart's pods
use them as a platform team uses managed ones (deploy/local/values-local.yaml
names these addresses). Where the address cannot be added (not root), they
listen on 127.0.0.1 alone and only the local processes of `make dev` reach them.
"""

from __future__ import annotations

import os

from aion.infra.component import InfraError
from aion.infra.node import HOST_IP, POD_CIDR, ensure_address

__all__ = ["HOST_IP", "POD_CIDR", "host_ip"]


def host_ip() -> str | None:
    """HOST_IP, put on lo first when it is missing; None where that is not allowed."""
    if os.geteuid() != 0:
        return None
    try:
        ensure_address(HOST_IP)
    except (InfraError, OSError):
        return None
    return HOST_IP
