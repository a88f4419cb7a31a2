"""The pure parts: reading statuses back, retry decisions, the canonical result's shape."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

import aion.sdk
from aion.api.v1 import common_pb2
from aion.sdk import cli, errors, options, results, retry


def _rpc_error(
    code: grpc.StatusCode,
    message: str,
    *details: error_details_pb2.BadRequest | error_details_pb2.RetryInfo,
) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if details:
        status = status_pb2.Status(code=code.value[0], message=message)
        for detail in details:
            status.details.add().Pack(detail)
        trailing.add("grpc-status-details-bin", status.SerializeToString())
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, message, "")


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def test_from_rpc_error_reads_field_and_retry_delay() -> None:
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="input", description="empty")
        ]
    )
    err = errors.from_rpc_error(_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "input is empty", bad))
    assert isinstance(err, aion.sdk.InvalidArgument)
    assert (err.field, err.retriable, err.code_name) == ("input", False, "INVALID_ARGUMENT")
    busy = errors.from_rpc_error(
        _rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", _retry_info(1.5))
    )
    assert isinstance(busy, aion.sdk.ResourceExhausted)
    assert busy.retry_after_s == pytest.approx(1.5)
    assert busy.retriable


def test_codes_without_a_class_become_the_base_error() -> None:
    err = errors.from_rpc_error(_rpc_error(grpc.StatusCode.DATA_LOSS, ""))
    assert type(err) is aion.sdk.AionError
    assert err.message == "DATA_LOSS"


def test_retry_delay_honours_retry_info_up_to_the_cap() -> None:
    policy = retry.RetryPolicy(max_retry_after_s=2.0)
    assert 1.0 <= policy.delay_s(1, retry_after_s=1.0) <= 1.1
    assert policy.delay_s(1, retry_after_s=60.0) == 2.0


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    policy = retry.RetryPolicy(initial_backoff_s=0.2, multiplier=2.0, max_backoff_s=1.0)
    assert 0.1 <= policy.delay_s(1) <= 0.2
    assert 0.2 <= policy.delay_s(2) <= 0.4
    assert 0.5 <= policy.delay_s(10) <= 1.0
    with pytest.raises(ValueError, match="max_attempts"):
        retry.RetryPolicy(max_attempts=0)


def test_only_connect_failures_count_as_never_sent() -> None:
    refused = _rpc_error(
        grpc.StatusCode.UNAVAILABLE,
        "failed to connect to all addresses; last error: Connection refused",
    )
    assert not retry.reached_server(refused)
    assert retry.reached_server(_rpc_error(grpc.StatusCode.UNAVAILABLE, "agent is draining"))
    assert retry.reached_server(
        _rpc_error(
            grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", _retry_info(1.0)
        )
    )


def test_non_idempotent_calls_retry_only_what_never_reached_the_server() -> None:
    policy = retry.RetryPolicy()
    attempts = retry.Attempts(policy, timeout_s=30, idempotent=False)
    attempts.start()
    assert (
        attempts.failed(
            _rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
        )
        > 0
    )
    attempts.start()
    with pytest.raises(aion.sdk.ResourceExhausted):
        attempts.failed(_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", _retry_info(0.1)))


def test_a_delay_past_the_deadline_is_not_waited_for() -> None:
    attempts = retry.Attempts(retry.RetryPolicy(), timeout_s=1.0, idempotent=True)
    attempts.start()
    with pytest.raises(aion.sdk.ResourceExhausted):
        attempts.failed(_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", _retry_info(5)))


def test_resource_exhausted_without_retry_info_is_not_retried() -> None:
    attempts = retry.Attempts(retry.RetryPolicy(), timeout_s=30, idempotent=True)
    attempts.start()
    with pytest.raises(aion.sdk.ResourceExhausted):
        attempts.failed(_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "message too large"))


def test_result_to_dict_of_a_queued_task() -> None:
    queued = common_pb2.TaskResult(task_id="t", agent="demo", status=common_pb2.TASK_STATUS_QUEUED)
    data = aion.sdk.result_to_dict(queued)
    assert data["status"] == "QUEUED"
    assert data["engine"]["route"] is None
    assert data["error"] is None
    assert data["created_at"] is None
    assert data["finished_at"] is None
    assert set(data) == {
        "task_id",
        "agent",
        "status",
        "output",
        "engine",
        "usage",
        "error",
        "created_at",
        "finished_at",
        "citations",
    }
    assert data["citations"] == []
    assert set(data["usage"]) == {
        "latency_ms",
        "prompt_tokens",
        "completion_tokens",
        "tokens",
        "cost_usd",
    }


def test_result_to_dict_of_a_failed_task() -> None:
    failed = common_pb2.TaskResult(
        status=common_pb2.TASK_STATUS_TIMEOUT,
        engine=common_pb2.Engine(route=common_pb2.ROUTE_HYBRID),
        error=common_pb2.TaskError(code="DEADLINE_EXCEEDED", message="slow", retriable=True),
    )
    data = results.result_to_dict(failed)
    assert data["status"] == "TIMEOUT"
    assert data["engine"]["route"] == "hybrid"
    assert data["error"] == {"code": "DEADLINE_EXCEEDED", "message": "slow", "retriable": True}


def test_credentials_metadata_and_privacy() -> None:
    assert options.credentials_metadata(api_key="k", token="Bearer t") == (
        ("x-api-key", "k"),
        ("authorization", "Bearer t"),
    )
    assert options.credentials_metadata(api_key="", token=None) == ()
    assert options.privacy_value("allow-api") == common_pb2.PRIVACY_ALLOW_API
    assert options.privacy_value(None) == common_pb2.PRIVACY_UNSPECIFIED


def test_cli_exit_codes() -> None:
    assert cli.exit_code(aion.sdk.PermissionDenied("no")) == 2
    assert cli.exit_code(aion.sdk.ResourceExhausted("busy")) == 3
    assert cli.exit_code(aion.sdk.Internal("bug")) == 1
