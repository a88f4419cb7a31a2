"""The errors the SDK raises: one class per gRPC status the gateway sends.

    AionError                    UNKNOWN (and any code without a class)
    ├── InvalidArgument          INVALID_ARGUMENT   (``field`` names the offending field)
    ├── NotFound                 NOT_FOUND
    ├── AlreadyExists            ALREADY_EXISTS
    ├── Unauthenticated          UNAUTHENTICATED
    ├── PermissionDenied         PERMISSION_DENIED
    ├── FailedPrecondition       FAILED_PRECONDITION
    ├── ResourceExhausted        RESOURCE_EXHAUSTED (retriable, ``retry_after_s`` from RetryInfo)
    ├── DeadlineExceeded         DEADLINE_EXCEEDED  (retriable with a longer deadline)
    ├── Cancelled                CANCELLED
    ├── Unavailable              UNAVAILABLE        (retriable)
    └── Internal                 INTERNAL

The tree mirrors the server's own (``aion.core.errors``) without importing it:
the SDK depends on ``aion.api`` alone. ``from_rpc_error`` reads the
google.rpc details the gateway attaches (BadRequest, RetryInfo).
"""

from __future__ import annotations

from typing import ClassVar

import grpc
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status


class AionError(Exception):
    """Base of every error the SDK raises for a failed call."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    retriable: ClassVar[bool] = False

    def __init__(
        self, message: str, *, field: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s

    @property
    def code_name(self) -> str:
        """The status code's canonical name, such as ``"NOT_FOUND"``."""
        return code_name(self.code)

    def __str__(self) -> str:
        text = f"{self.code_name}: {self.message}"
        return f"{text} (field: {self.field})" if self.field else text


class InvalidArgument(AionError):
    """The request is malformed; ``field`` says which field when the server knows."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(AionError):
    """The named agent, task or document does not exist for this tenant."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(AionError):
    """The resource exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(AionError):
    """No valid API key or token was given."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(AionError):
    """The caller's credentials do not allow this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class FailedPrecondition(AionError):
    """The system is not in a state that allows this (for example a task that has ended)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(AionError):
    """A limit or a queue is full; retry after ``retry_after_s``."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retriable = True


class DeadlineExceeded(AionError):
    """The deadline passed before the work finished."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    retriable = True


class Cancelled(AionError):
    """The call was cancelled."""

    code = grpc.StatusCode.CANCELLED


class Unavailable(AionError):
    """The gateway (or a service behind it) cannot be reached right now; retry."""

    code = grpc.StatusCode.UNAVAILABLE
    retriable = True


class Internal(AionError):
    """A failure on the server's side."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[AionError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        Unauthenticated,
        PermissionDenied,
        FailedPrecondition,
        ResourceExhausted,
        DeadlineExceeded,
        Cancelled,
        Unavailable,
        Internal,
    )
}


def for_code(code: grpc.StatusCode) -> type[AionError]:
    """The error class for a gRPC status code (AionError for codes without one)."""
    return _BY_CODE.get(code, AionError)


def code_name(code: grpc.StatusCode) -> str:
    """The canonical name of a status code, such as ``"NOT_FOUND"``."""
    return str(code_pb2.Code.Name(code.value[0]))


def from_rpc_error(exc: grpc.RpcError) -> AionError:
    """The AionError a failed call stands for, with its field and retry delay when sent."""
    if not isinstance(exc, grpc.Call | grpc.aio.AioRpcError):
        return AionError(str(exc) or "the call failed")
    cls = for_code(exc.code())
    message = exc.details() or code_name(exc.code())
    field: str | None = None
    retry_after: float | None = None
    try:
        status = rpc_status.from_call(exc)
    except ValueError:
        # The details disagree with the status (a proxy rewrote one): keep the status.
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            if bad.field_violations:
                field = bad.field_violations[0].field
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            retry_after = info.retry_delay.ToNanoseconds() / 1e9
    return cls(message, field=field, retry_after_s=retry_after)
