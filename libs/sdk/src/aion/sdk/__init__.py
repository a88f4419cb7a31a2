"""aion's Python SDK: an async and a sync client of the gateway, and the errors they raise.

async with aion.sdk.AsyncClient() as client:
    async for event in client.stream("demo", "What is Kubernetes?"):
        ...
"""

from aion.sdk.client import AsyncClient
from aion.sdk.errors import (
    AionError,
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)
from aion.sdk.results import agent_to_dict, event_result, result_to_dict
from aion.sdk.retry import RetryPolicy
from aion.sdk.sync_client import Client

__all__ = [
    "AionError",
    "AlreadyExists",
    "AsyncClient",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryPolicy",
    "Unauthenticated",
    "Unavailable",
    "agent_to_dict",
    "event_result",
    "from_rpc_error",
    "result_to_dict",
]
