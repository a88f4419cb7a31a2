"""The server interceptor every aion service runs: errors to statuses, and RPC metrics.

It wraps each handler so that an ``AionError`` becomes its gRPC status (with
google.rpc details), any other exception becomes INTERNAL without leaking its
text, and every call is counted and timed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_status import rpc_status

from aion.core import errors, metrics

log = logging.getLogger(__name__)

_Unary = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
_Streaming = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]


async def _abort(context: grpc.aio.ServicerContext[Any, Any], err: errors.AionError) -> None:
    await context.abort_with_status(rpc_status.to_status(err.to_status()))


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class _Call:
    """Bookkeeping for one RPC: the status it ended with, recorded once."""

    def __init__(self, method: str) -> None:
        self.service, self.name = _split(method)
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.OK
        metrics.RPC_IN_FLIGHT.labels(self.service).inc()

    async def fail(self, context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
        if isinstance(exc, errors.AionError):
            err = exc
        else:
            log.exception("unhandled error in %s/%s", self.service, self.name)
            err = errors.Internal(f"internal error in {self.name}; see the service log")
        self.code = err.code
        await _abort(context, err)

    def finish(self) -> None:
        metrics.RPC_IN_FLIGHT.labels(self.service).dec()
        metrics.RPC_HANDLED.labels(self.service, self.name, self.code.name).inc()
        metrics.RPC_SECONDS.labels(self.service, self.name).observe(
            time.perf_counter() - self.started
        )


def _wrap_unary(method: str, behavior: _Unary) -> _Unary:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        call = _Call(method)
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            call.code = _code_of(context)
            raise
        except asyncio.CancelledError:  # the caller went away (or the server is stopping)
            call.code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            await call.fail(context, exc)
        finally:
            call.finish()

    return handler


def _wrap_streaming(method: str, behavior: _Streaming) -> _Streaming:
    async def handler(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        call = _Call(method)
        try:
            async for item in behavior(request, context):
                yield item
        except grpc.aio.AbortError:
            call.code = _code_of(context)
            raise
        except asyncio.CancelledError:
            call.code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            await call.fail(context, exc)
        finally:
            call.finish()

    return handler


def _code_of(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps the error tree onto gRPC statuses and records RPC metrics."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        # RpcMethodHandler is a namedtuple: replace the behaviour we wrap. A client-streaming
        # behaviour takes the request iterator where a unary one takes the request.
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_wrap_unary(method, handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=_wrap_streaming(method, handler.unary_stream))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=_wrap_unary(method, handler.stream_unary))
        if handler.stream_stream is not None:
            return handler._replace(stream_stream=_wrap_streaming(method, handler.stream_stream))
        return handler
