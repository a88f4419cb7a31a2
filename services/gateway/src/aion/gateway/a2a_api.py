"""A2A (protocol 1.0, JSON-RPC and HTTP+JSON bindings): each of a tenant's agents as an A2A agent.

``GET /a2a/{agent}/.well-known/agent-card.json`` is the agent's card (for the
caller's tenant: the same credentials as every other call); ``POST
/a2a/{agent}`` takes A2A's JSON-RPC methods, and ``/a2a/{agent}/message:send``,
``/message:stream``, ``/tasks/{id}``, ``/tasks/{id}:cancel`` and
``/tasks/{id}:subscribe`` its HTTP+JSON binding, both through the ``a2a-sdk``
package's dispatchers, mapped onto aion tasks, so an A2A task *is* an aion
task: the same id, the same store, the same Get and Cancel from gRPC or HTTP.

- ``SendMessage`` runs the agent on the message's text parts (waits for the
  result; ``returnImmediately`` submits asynchronously); the message id is
  the task's idempotency key, so a retried message returns the first task.
- ``SendStreamingMessage`` streams the task: the task (WORKING), the output as
  artifact chunks, then the final status.
- ``GetTask``, ``CancelTask`` and ``SubscribeToTask`` (follow a task from its
  first event) act on any of the tenant's tasks by id; a task that ended other
  than CANCELED is not cancelable.
- Task listing, push notifications and extended cards are not offered.

A task's state maps QUEUED to SUBMITTED, RUNNING to WORKING, OK to COMPLETED,
ERROR and TIMEOUT to FAILED, CANCELED to CANCELED; the canonical result rides
in the task's ``metadata.aion``. Credentials, roles and the agent's existence
are checked before the call is read, so they get HTTP 401, 403 or 404; errors
inside a call are A2A errors naming what to fix. That check counts the request
once against the rate limits; the Tasks call it then makes is not counted
again (``http_calls.Admission``), so one A2A request is one call.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any, NoReturn

from a2a.server import context as a2a_context
from a2a.server.request_handlers import request_handler, response_helpers
from a2a.server.routes import common, jsonrpc_routes, rest_routes
from a2a.types import a2a_pb2 as a2a
from a2a.utils import errors as a2a_errors
from google.protobuf import struct_pb2
from starlette import requests, responses, routing

from aion.api.v1 import agents_pb2, common_pb2, tasks_pb2
from aion.core import errors
from aion.gateway import auth, http_app, http_calls, results, servicers

PROTOCOL_VERSION = "1.0"
_STATE = {
    common_pb2.TASK_STATUS_QUEUED: a2a.TASK_STATE_SUBMITTED,
    common_pb2.TASK_STATUS_RUNNING: a2a.TASK_STATE_WORKING,
    common_pb2.TASK_STATUS_OK: a2a.TASK_STATE_COMPLETED,
    common_pb2.TASK_STATUS_ERROR: a2a.TASK_STATE_FAILED,
    common_pb2.TASK_STATUS_TIMEOUT: a2a.TASK_STATE_FAILED,
    common_pb2.TASK_STATUS_CANCELED: a2a.TASK_STATE_CANCELED,
}
_ENDED = frozenset(
    {common_pb2.TASK_STATUS_OK, common_pb2.TASK_STATUS_ERROR, common_pb2.TASK_STATUS_TIMEOUT}
)
OUTPUT = "output"  # the artifact that carries the agent's answer
# The SDK's routes aion serves: JSON-RPC, and HTTP+JSON's message and task routes.
_OFFERED = re.compile(
    r"^/a2a/\{agent\}(/message:(send|stream)|/tasks/\{id\}(:cancel|:subscribe)?)?$"
)


def _metadata(result: common_pb2.TaskResult) -> struct_pb2.Struct:
    meta = struct_pb2.Struct()
    meta.update({"aion": results.result_to_dict(result)})
    return meta


def task_of(result: common_pb2.TaskResult, *, context_id: str = "") -> a2a.Task:
    """The A2A task an aion result stands for."""
    status = a2a.TaskStatus(state=_STATE.get(result.status, a2a.TASK_STATE_UNSPECIFIED))
    if result.HasField("error") and result.error.message:
        status.message.CopyFrom(
            a2a.Message(
                message_id=f"{result.task_id}-error",
                role=a2a.ROLE_AGENT,
                parts=[a2a.Part(text=f"{result.error.code}: {result.error.message}")],
            )
        )
    task = a2a.Task(
        id=result.task_id,
        context_id=context_id or result.task_id,
        status=status,
        metadata=_metadata(result),
    )
    if result.output:
        task.artifacts.append(
            a2a.Artifact(artifact_id=OUTPUT, name=OUTPUT, parts=[a2a.Part(text=result.output)])
        )
    return task


def _raise(err: errors.AionError, *, about_task: bool = False) -> NoReturn:
    if isinstance(err, errors.NotFound) and about_task:
        raise a2a_errors.TaskNotFoundError(err.message) from err
    if isinstance(err, errors.InvalidArgument):
        raise a2a_errors.InvalidParamsError(err.message) from err
    if isinstance(err, errors.FailedPrecondition) and about_task:
        raise a2a_errors.TaskNotCancelableError(err.message) from err
    if (
        isinstance(
            err, errors.Unavailable | errors.DeadlineExceeded | errors.Internal | errors.Cancelled
        )
        or type(err) is errors.AionError
    ):
        raise a2a_errors.InternalError(err.message) from err
    raise a2a_errors.InvalidRequestError(err.message) from err


@contextlib.contextmanager
def _mapped(*, about_task: bool = False) -> Iterator[None]:
    try:
        yield
    except errors.AionError as err:
        _raise(err, about_task=about_task)


class _Context(common.DefaultServerCallContextBuilder):
    """Adds the agent of the path to the SDK's call context (which carries the headers)."""

    def build(self, request: requests.Request) -> a2a_context.ServerCallContext:
        built = super().build(request)
        built.state["agent"] = request.path_params.get("agent", "")
        built.state["admitted"] = http_calls.admission_of(request.scope)
        return built


class Handler(request_handler.RequestHandler):
    """A2A's methods over the gateway's Tasks servicer."""

    def __init__(self, *, tasks: servicers.TasksServicer, timeout_s: float) -> None:
        self._tasks = tasks
        self._timeout_s = timeout_s

    def _call(self, context: a2a_context.ServerCallContext) -> http_calls.Call:
        admitted = context.state.get("admitted")
        return http_calls.Call(
            context.state.get("headers", {}),
            timeout_s=self._timeout_s,
            admitted=admitted if isinstance(admitted, http_calls.Admission) else None,
        )

    def _spec(
        self, params: a2a.SendMessageRequest, context: a2a_context.ServerCallContext
    ) -> tasks_pb2.TaskSpec:
        message = params.message
        if message.task_id:
            raise a2a_errors.InvalidParamsError(
                "an aion task takes one message: send a new message without taskId"
            )
        text = "\n".join(part.text for part in message.parts if part.text)
        if not text.strip():
            raise a2a_errors.ContentTypeNotSupportedError(
                "the message has no text part; aion agents take text"
            )
        return tasks_pb2.TaskSpec(
            agent=str(context.state.get("agent", "")),
            input=text,
            idempotency_key=message.message_id,
        )

    async def on_message_send(
        self, params: a2a.SendMessageRequest, context: a2a_context.ServerCallContext
    ) -> a2a.Task:
        """``SendMessage``: the task, once it ends (or QUEUED with returnImmediately)."""
        spec = self._spec(params, context)
        with _mapped():
            sent = await self._tasks.Submit(
                tasks_pb2.SubmitRequest(
                    task=spec, asynchronous=params.configuration.return_immediately
                ),
                self._call(context).context(),
            )
        return task_of(sent.result, context_id=params.message.context_id)

    async def on_message_send_stream(
        self,
        params: a2a.SendMessageRequest,
        context: a2a_context.ServerCallContext,
    ) -> AsyncGenerator[Any]:
        """``SendStreamingMessage``: the task, its output in chunks, its final status."""
        spec = self._spec(params, context)
        events = self._tasks.Stream(
            tasks_pb2.StreamRequest(task=spec), self._call(context).context()
        )
        async for event in self._events(events, context_id=params.message.context_id):
            yield event

    async def on_subscribe_to_task(
        self,
        params: a2a.SubscribeToTaskRequest,
        context: a2a_context.ServerCallContext,
    ) -> AsyncGenerator[Any]:
        """``SubscribeToTask``: a task's events from its start, to its end."""
        events = self._tasks.Stream(
            tasks_pb2.StreamRequest(task_id=params.id), self._call(context).context()
        )
        async for event in self._events(events, context_id="", about_task=True):
            yield event

    async def _events(
        self,
        events: AsyncIterator[tasks_pb2.TaskEvent],
        *,
        context_id: str,
        about_task: bool = False,
    ) -> AsyncIterator[Any]:
        chunks = 0
        try:
            with _mapped(about_task=about_task):
                async for event in events:
                    ctx = context_id or event.task_id
                    kind = event.WhichOneof("event")
                    if kind == "started":
                        yield a2a.Task(
                            id=event.task_id,
                            context_id=ctx,
                            status=a2a.TaskStatus(state=a2a.TASK_STATE_WORKING),
                        )
                    elif kind == "token" and event.token.text:
                        chunks += 1
                        yield a2a.TaskArtifactUpdateEvent(
                            task_id=event.task_id,
                            context_id=ctx,
                            append=chunks > 1,
                            artifact=a2a.Artifact(
                                artifact_id=OUTPUT,
                                name=OUTPUT,
                                parts=[a2a.Part(text=event.token.text)],
                            ),
                        )
                    elif kind in ("done", "error"):
                        result = event.done.result if kind == "done" else event.error.result
                        final = task_of(result, context_id=ctx)
                        yield a2a.TaskStatusUpdateEvent(
                            task_id=event.task_id,
                            context_id=ctx,
                            status=final.status,
                            metadata=final.metadata,
                        )
        finally:
            if isinstance(events, AsyncGenerator):
                await events.aclose()

    async def on_get_task(
        self, params: a2a.GetTaskRequest, context: a2a_context.ServerCallContext
    ) -> a2a.Task | None:
        """``GetTask``."""
        with _mapped(about_task=True):
            result = await self._tasks.Get(
                tasks_pb2.GetTaskRequest(task_id=params.id), self._call(context).context()
            )
        return task_of(result)

    async def on_cancel_task(
        self, params: a2a.CancelTaskRequest, context: a2a_context.ServerCallContext
    ) -> a2a.Task | None:
        """``CancelTask``; a task that ended otherwise is not cancelable."""
        with _mapped(about_task=True):
            result = await self._tasks.Cancel(
                tasks_pb2.CancelTaskRequest(task_id=params.id), self._call(context).context()
            )
        if result.status in _ENDED:
            raise a2a_errors.TaskNotCancelableError(
                f"task '{result.task_id}' has ended {results.status_name(result.status)}"
            )
        return task_of(result)

    async def on_list_tasks(
        self, params: a2a.ListTasksRequest, context: a2a_context.ServerCallContext
    ) -> a2a.ListTasksResponse:
        """Not offered: aion has no task listing yet."""
        raise a2a_errors.UnsupportedOperationError("aion does not list tasks")

    async def on_create_task_push_notification_config(
        self, params: a2a.TaskPushNotificationConfig, context: a2a_context.ServerCallContext
    ) -> a2a.TaskPushNotificationConfig:
        """Not offered."""
        raise a2a_errors.PushNotificationNotSupportedError()

    async def on_get_task_push_notification_config(
        self,
        params: a2a.GetTaskPushNotificationConfigRequest,
        context: a2a_context.ServerCallContext,
    ) -> a2a.TaskPushNotificationConfig:
        """Not offered."""
        raise a2a_errors.PushNotificationNotSupportedError()

    async def on_list_task_push_notification_configs(
        self,
        params: a2a.ListTaskPushNotificationConfigsRequest,
        context: a2a_context.ServerCallContext,
    ) -> a2a.ListTaskPushNotificationConfigsResponse:
        """Not offered."""
        raise a2a_errors.PushNotificationNotSupportedError()

    async def on_delete_task_push_notification_config(
        self,
        params: a2a.DeleteTaskPushNotificationConfigRequest,
        context: a2a_context.ServerCallContext,
    ) -> None:
        """Not offered."""
        raise a2a_errors.PushNotificationNotSupportedError()

    async def on_get_extended_agent_card(
        self, params: a2a.GetExtendedAgentCardRequest, context: a2a_context.ServerCallContext
    ) -> a2a.AgentCard:
        """Not offered: the card at the well-known path is already the caller's."""
        raise a2a_errors.ExtendedAgentCardNotConfiguredError()


def card(agent: agents_pb2.Agent, *, url: str) -> a2a.AgentCard:
    """The A2A agent card of ``agent``, served at ``url``."""
    description = agent.description or f"The aion agent '{agent.name}'."
    return a2a.AgentCard(
        name=agent.name,
        description=description,
        version=PROTOCOL_VERSION,
        supported_interfaces=[
            a2a.AgentInterface(url=url, protocol_binding=binding, protocol_version=PROTOCOL_VERSION)
            for binding in ("JSONRPC", "HTTP+JSON")
        ],
        provider=a2a.AgentProvider(organization="aion", url=url),
        capabilities=a2a.AgentCapabilities(streaming=True),
        security_schemes={
            "bearer": a2a.SecurityScheme(
                http_auth_security_scheme=a2a.HTTPAuthSecurityScheme(scheme="bearer")
            )
        },
        security_requirements=[a2a.SecurityRequirement(schemes={"bearer": a2a.StringList()})],
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[
            a2a.AgentSkill(
                id=agent.name,
                name=agent.name,
                description=description,
                tags=["aion"],
                input_modes=["text/plain"],
                output_modes=["text/plain"],
            )
        ],
    )


class A2AApi:
    """The routes: each agent's card and JSON-RPC endpoint."""

    def __init__(
        self,
        *,
        guard: servicers.Guard,
        tasks: servicers.TasksServicer,
        agents: servicers.AgentsServicer,
        timeout_s: float,
        max_body_bytes: int,
    ) -> None:
        self._guard = guard
        self._agents = agents
        self._timeout_s = timeout_s
        self._max_body = max_body_bytes
        handler = Handler(tasks=tasks, timeout_s=timeout_s)
        served = [
            *jsonrpc_routes.create_jsonrpc_routes(
                handler, "/a2a/{agent}", context_builder=_Context()
            ),
            # (The SDK also mounts the REST routes under "/{tenant}"; aion's tenant comes
            # from the credentials, so only the plain routes are taken.)
            *rest_routes.create_rest_routes(
                handler, context_builder=_Context(), path_prefix="/a2a/{agent}"
            ),
        ]
        self.routes: list[routing.BaseRoute] = [
            routing.Route(
                "/a2a/{agent}/.well-known/agent-card.json",
                http_app.guarded(self.agent_card, not_found="agent"),
                methods=["GET"],
            ),
            *(
                routing.Route(
                    route.path,
                    http_app.guarded(self._checked(route.endpoint), not_found="agent"),
                    methods=sorted((route.methods or set()) - {"HEAD"}),
                )
                for route in served
                if isinstance(route, routing.Route) and _OFFERED.match(route.path)
            ),
        ]

    async def _agent(
        self,
        request: requests.Request,
        admitted: http_calls.Admission[auth.Principal] | None = None,
    ) -> agents_pb2.Agent:
        call = http_calls.Call(
            request.headers, timeout_s=self._timeout_s, client=request.client, admitted=admitted
        )
        return await self._agents.Get(
            agents_pb2.GetAgentRequest(name=request.path_params["agent"]), call.context()
        )

    async def agent_card(self, request: requests.Request) -> responses.Response:
        """The card of the caller's agent."""
        agent = await self._agent(request)
        url = str(request.base_url).rstrip("/") + f"/a2a/{agent.name}"
        return responses.JSONResponse(response_helpers.agent_card_to_dict(card(agent, url=url)))

    def _checked(self, endpoint: Any) -> http_app.Handler:
        async def checked(request: requests.Request) -> responses.Response:
            # Credentials, role and the agent, as HTTP errors; the request counted once, for
            # this check and the one Tasks call its A2A method makes.
            door = http_calls.Call(
                request.headers, timeout_s=self._timeout_s, client=request.client
            )
            admission = await self._guard.admit(door.context(), "viewer", uses=2)
            await self._agent(request, admission)
            http_calls.leave_admission(request.scope, admission)
            await http_app.read_body(request, max_bytes=self._max_body)
            response: responses.Response = await endpoint(request)
            return response

        return checked
