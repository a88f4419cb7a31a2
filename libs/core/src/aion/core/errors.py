"""The one error tree of aion, and its mapping to and from gRPC statuses.

    AionError                    UNKNOWN
    ├── InvalidArgument          INVALID_ARGUMENT   (carries the offending field)
    ├── NotFound                 NOT_FOUND
    ├── AlreadyExists            ALREADY_EXISTS
    ├── Unauthenticated          UNAUTHENTICATED
    ├── PermissionDenied         PERMISSION_DENIED
    ├── FailedPrecondition       FAILED_PRECONDITION
    ├── ResourceExhausted        RESOURCE_EXHAUSTED (retriable, carries retry_after_s)
    ├── DeadlineExceeded         DEADLINE_EXCEEDED  (retriable)
    ├── Cancelled                CANCELLED
    ├── Unavailable              UNAVAILABLE        (retriable)
    └── Internal                 INTERNAL

Servers raise these; ``aion.core.server``'s interceptor turns them into a
gRPC status with google.rpc details (BadRequest for the field, RetryInfo for
the delay). ``from_rpc_error`` turns a status received from another service
back into the same class, so an error crosses services unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar, TypeVar

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

MAX_MESSAGE_CHARS = 1024
_T = TypeVar("_T")


def _cut(text: str) -> str:
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    return f"{text[:MAX_MESSAGE_CHARS]}... ({len(text) - MAX_MESSAGE_CHARS} more characters)"


class AionError(Exception):
    """Base of every error aion raises on purpose."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    retriable: ClassVar[bool] = False

    def __init__(
        self, message: str, *, field: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s

    def to_status(self) -> status_pb2.Status:
        """The google.rpc.Status that carries this error over gRPC. The message is cut to
        MAX_MESSAGE_CHARS: it travels in the trailers, and a message quoting a huge input
        would exceed their 16 KiB limit, so the caller would get RESOURCE_EXHAUSTED
        ("received metadata size exceeds hard limit") instead of this error."""
        message = _cut(self.message)
        status = status_pb2.Status(code=self.code.value[0], message=message)
        if self.field is not None:
            detail = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=_cut(self.field), description=message
                    )
                ]
            )
            status.details.add().Pack(detail)
        if self.retry_after_s is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after_s * 1e9))
            status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return status


class InvalidArgument(AionError):
    """The request is malformed; the message says which field and why."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(AionError):
    """The named agent, task or document does not exist for this tenant."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(AionError):
    """The resource exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(AionError):
    """No valid credentials were given."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(AionError):
    """The caller may not do this."""

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
    """The work was cancelled."""

    code = grpc.StatusCode.CANCELLED


class Unavailable(AionError):
    """A dependency is down or not ready yet; retry."""

    code = grpc.StatusCode.UNAVAILABLE
    retriable = True


class Internal(AionError):
    """A bug or an unexpected failure; the message is safe to show."""

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


def from_rpc_error(exc: grpc.aio.AioRpcError) -> AionError:
    """The AionError a status received from another service stands for."""
    return _from_status(
        exc.code(), exc.details() or code_name(exc.code()), rpc_status.from_call(exc)
    )


def _from_status(
    code: grpc.StatusCode, message: str, status: status_pb2.Status | None
) -> AionError:
    field: str | None = None
    retry_after: float | None = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                if bad.field_violations:
                    field = bad.field_violations[0].field
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                retry_after = info.retry_delay.ToNanoseconds() / 1e9
    return for_code(code)(message, field=field, retry_after_s=retry_after)


# A client-streaming call's error, sent ahead of its status in the initial metadata (see
# ``send_ahead``).
ERROR_METADATA = "aion-error-bin"
_CODES = {c.value[0]: c for c in grpc.StatusCode}


async def send_ahead(context: grpc.aio.ServicerContext[Any, Any], err: AionError) -> None:
    """Send ``err`` in the initial metadata before the status that carries it, for the
    clients of a client-streaming method. When the server ends such a call while a grpc.aio
    client still writes, the client can report the failed write (INTERNAL, "Internal error
    from Core") in place of the status (grpc/grpc#36066); the initial metadata arrives before
    the status and is kept, so ``remote_stream`` reads the error back from it. Best effort:
    nothing is sent when the metadata has gone already (or the caller has)."""
    with contextlib.suppress(Exception):  # metadata sent already, or the call is over
        await context.send_initial_metadata(
            ((ERROR_METADATA, err.to_status().SerializeToString()),)
        )


async def remote_stream(service: str, call: grpc.aio.StreamUnaryCall[Any, _T]) -> _T:
    """The response of a client-streaming call to ``service``; its failure as the matching
    AionError (as ``remote``), the error its server sent ahead (``send_ahead``) first."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        err = await _sent_ahead(call) or from_rpc_error(exc)
        if isinstance(err, Unavailable):
            err = Unavailable(
                f"{service} is unavailable: {err.message}", retry_after_s=err.retry_after_s
            )
        raise err from exc


async def _sent_ahead(call: grpc.aio.StreamUnaryCall[Any, Any]) -> AionError | None:
    try:
        metadata = await call.initial_metadata()
    except Exception:  # no metadata came
        return None
    for key, value in metadata or ():
        if key == ERROR_METADATA and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except DecodeError:
                return None
            code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
            return _from_status(code, status.message or code_name(code), status)
    return None


@contextlib.contextmanager
def remote(service: str) -> Iterator[None]:
    """Re-raise a gRPC error from ``service`` as the matching AionError.

    A peer that cannot be reached becomes ``Unavailable`` naming the service,
    so the caller's client learns which hop failed.
    """
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        err = from_rpc_error(exc)
        if isinstance(err, Unavailable):
            err = Unavailable(
                f"{service} is unavailable: {err.message}", retry_after_s=err.retry_after_s
            )
        raise err from exc
