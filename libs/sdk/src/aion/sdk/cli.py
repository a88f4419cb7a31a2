"""``aionctl``: run aion's agents from a shell.

    aionctl [--target H:P] [--api-key K | --token JWT] [--timeout S] COMMAND
      submit  --agent NAME [--async] [--max-tokens N] [--idempotency-key K] [--json] INPUT
      stream  --agent NAME [--max-tokens N] [--json] INPUT
      follow  TASK_ID [--json]
      get     TASK_ID [--json]
      cancel  TASK_ID [--json]
      agents  [NAME] [--json]
      apply   -f FILE [--json]
      health  [--service NAME]
      kb      ingest|status|search|delete   (knowledge bases; see aion.sdk.kb)
      keys    create|list|revoke            (API keys, admins; see aion.sdk.keys)

INPUT ``-`` reads stdin. An SDK error prints one line to stderr and exits 2
(the request is wrong), 3 (try again later) or 1 (anything else); a task that
ends ERROR, TIMEOUT or CANCELED exits 1.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click
import grpc

from aion.api.v1 import common_pb2, tasks_pb2
from aion.sdk import errors, kb, keys, options, render, results, sync_client

_F = TypeVar("_F", bound=Callable[..., Any])

_EXIT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: 2,
    grpc.StatusCode.NOT_FOUND: 2,
    grpc.StatusCode.PERMISSION_DENIED: 2,
    grpc.StatusCode.UNAUTHENTICATED: 2,
    grpc.StatusCode.FAILED_PRECONDITION: 2,
    grpc.StatusCode.UNAVAILABLE: 3,
    grpc.StatusCode.DEADLINE_EXCEEDED: 3,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 3,
}


def exit_code(err: errors.AionError) -> int:
    """2 when the request must change, 3 when a later try may work, 1 otherwise."""
    return _EXIT_CODES.get(err.code, 1)


@dataclasses.dataclass(frozen=True)
class _Connection:
    target: str
    api_key: str | None
    token: str | None
    timeout: float | None
    tls: bool


class _Group(click.Group):
    """Turns the SDK's errors into one line on stderr and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.AionError as err:
            click.echo(f"error: {err}", err=True)
            raise click.exceptions.Exit(exit_code(err)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--target",
    envvar="AION_TARGET",
    default=options.DEFAULT_TARGET,
    show_default=True,
    help="The gateway's host:port [env AION_TARGET].",
)
@click.option("--api-key", envvar="AION_API_KEY", help="API key [env AION_API_KEY].")
@click.option("--token", envvar="AION_TOKEN", help="JWT bearer token [env AION_TOKEN].")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Deadline of the call in seconds [default: 30; 300 for submit, stream].",
)
@click.option("--tls", is_flag=True, envvar="AION_TLS", help="Use TLS [env AION_TLS].")
@click.pass_context
def main(
    ctx: click.Context,
    target: str,
    api_key: str | None,
    token: str | None,
    timeout: float | None,
    tls: bool,
) -> None:
    """Run aion's agents: submit or stream tasks, follow them, list agents."""
    ctx.obj = _Connection(target=target, api_key=api_key, token=token, timeout=timeout, tls=tls)


def _client(ctx: click.Context) -> sync_client.Client:
    conn: _Connection = ctx.obj
    return ctx.with_resource(
        sync_client.Client(
            conn.target,
            api_key=conn.api_key or "",
            token=conn.token or "",
            timeout=conn.timeout,
            task_timeout=conn.timeout,
            credentials=grpc.ssl_channel_credentials() if conn.tls else None,
        )
    )


def _read_input(text: str) -> str:
    if text == "-":
        return sys.stdin.read().rstrip("\n")
    return text


def _task_options(fn: _F) -> _F:
    """The options of a task, shared by ``submit`` and ``stream``."""
    decorators = [
        click.option("--agent", "-a", required=True, help="The agent to run."),
        click.option("--max-tokens", type=int, help="Most tokens to generate."),
        click.option("--temperature", type=float, help="Sampling temperature."),
        click.option("--budget-usd", type=float, help="Most the task may spend, in USD."),
        click.option("--sla-ms", type=int, help="Latency target in milliseconds."),
        click.option(
            "--privacy",
            type=click.Choice(["local-only", "allow-api", "hybrid"]),
            help="What may leave the cluster.",
        ),
        click.option("--seed", type=int, help="Sampling seed."),
        click.option("--idempotency-key", help="Retries with this key return the same task."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
        click.argument("input"),
    ]
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn


def _finish(result: common_pb2.TaskResult, *, as_json: bool) -> None:
    """Print a task's summary (or its JSON), then fail if the task did not end OK."""
    if as_json:
        click.echo(json.dumps(results.result_to_dict(result), indent=2))
    else:
        click.secho(render.summary(result), err=True, dim=True)
    line = render.failure(result)
    if line is not None:
        click.echo(line, err=True)
        raise click.exceptions.Exit(1)


@main.command()
@_task_options
@click.option(
    "--async", "asynchronous", is_flag=True, help="Return the task id at once instead of waiting."
)
@click.pass_context
def submit(
    ctx: click.Context, /, input: str, as_json: bool, asynchronous: bool, **knobs: Any
) -> None:
    """Run a task and print its result.

    INPUT - reads stdin. With --async, prints the task id at once instead.
    """
    response = _client(ctx).submit(
        knobs.pop("agent"), _read_input(input), asynchronous=asynchronous, **knobs
    )
    result = response.result
    if not result.task_id:
        result.task_id = response.task_id
    if not as_json and (asynchronous or result.output):
        click.echo(response.task_id if asynchronous else result.output)
    _finish(result, as_json=as_json)


@main.command()
@_task_options
@click.pass_context
def stream(ctx: click.Context, /, input: str, as_json: bool, **knobs: Any) -> None:
    """Run a task and print its tokens as they arrive.

    INPUT - reads stdin. With --json, prints only the final result.
    """
    _print_events(
        _client(ctx).stream(knobs.pop("agent"), _read_input(input), **knobs), as_json=as_json
    )


@main.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def follow(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Print a running task's tokens as they arrive."""
    _print_events(_client(ctx).follow(task_id), as_json=as_json)


def _print_events(events: Iterable[tasks_pb2.TaskEvent], *, as_json: bool) -> None:
    result: common_pb2.TaskResult | None = None
    printed = False
    for event in events:
        if event.WhichOneof("event") == "token" and not as_json:
            click.echo(event.token.text, nl=False)
            printed = True
        result = results.event_result(event) or result
    if result is None:
        click.echo("error: the stream ended without a result", err=True)
        raise click.exceptions.Exit(1)
    if printed:
        click.echo()
    elif result.output and not as_json:
        # No tokens were streamed (a step answered by an API): show the output whole.
        click.echo(result.output)
    _finish(result, as_json=as_json)


@main.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--trace",
    "show_trace",
    is_flag=True,
    help="Print only the address of the task's trace in the trace store's UI.",
)
@click.option(
    "--trace-ui",
    envvar="AION_TRACE_UI",
    default=options.DEFAULT_TRACE_UI,
    show_default=True,
    help="The trace store's UI (Jaeger) [env AION_TRACE_UI].",
)
@click.pass_context
def get(ctx: click.Context, task_id: str, as_json: bool, show_trace: bool, trace_ui: str) -> None:
    """Show a task's result or current state (or, with --trace, where to see its trace)."""
    result = _client(ctx).get(task_id)
    if not show_trace:
        _show(result, as_json=as_json)
        return
    if not result.trace_id:
        click.echo(
            f"error: task {result.task_id} has no trace (it was created outside one)", err=True
        )
        raise click.exceptions.Exit(1)
    click.echo(options.trace_url(trace_ui, result.trace_id))


@main.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def cancel(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Stop a task and show its result."""
    _show(_client(ctx).cancel(task_id), as_json=as_json)


def _show(result: common_pb2.TaskResult, *, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(results.result_to_dict(result), indent=2))
    else:
        click.echo(render.describe(result))


@main.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def agents(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """List the agents you may call, or show one by NAME."""
    client = _client(ctx)
    if name is not None:
        agent = client.get_agent(name)
        click.echo(
            json.dumps(results.agent_to_dict(agent), indent=2)
            if as_json
            else render.describe_agent(agent)
        )
        return
    found = client.list_agents()
    click.echo(
        json.dumps([results.agent_to_dict(a) for a in found], indent=2)
        if as_json
        else render.agents_table(found)
    )


@main.command()
@click.option(
    "--filename",
    "-f",
    "files",
    multiple=True,
    required=True,
    type=click.File("r"),
    help="A YAML file of Agent resources; - reads stdin.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def apply(ctx: click.Context, files: tuple[Any, ...], as_json: bool) -> None:
    """Register the Agent resources of YAML files (the CRD's schema), without a cluster."""
    client = _client(ctx)
    applied = [a for f in files for a in client.apply_agents(f.read())]
    if as_json:
        click.echo(json.dumps([results.agent_to_dict(a) for a in applied], indent=2))
        return
    for agent in applied:
        click.echo(f"agent/{agent.name} applied")


@main.command()
@click.option("--service", default="", help="One service's name; the whole server if unset.")
@click.pass_context
def health(ctx: click.Context, service: str) -> None:
    """Print the gateway's health; exit 1 unless SERVING."""
    status = _client(ctx).health(service)
    click.echo(status)
    if status != "SERVING":
        raise click.exceptions.Exit(1)


kb.register(main, _client)
keys.register(main, _client)
