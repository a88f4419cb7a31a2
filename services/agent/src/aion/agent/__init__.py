"""aion agent service: the agent registry and the task lifecycle.

The edge (protobuf in, protobuf out):

- ``main``: the composition root (``python -m aion.agent``); ``startup``: migrations and topics.
- ``servicer``: the AgentService gRPC methods; ``convert``: every protobuf message, both ways.
- ``settings``: the service's configuration (``AION_AGENT_*``).

Running tasks:

- ``worker``: this replica's named background tasks and their drain order (``Worker``).
- ``work_queue``: the work topic's consumer: queued tasks made ready for ``Runner.dispatch``.
- ``runner``: starts, runs, cancels and stops tasks under their leases (``Runner``).
- ``agent_loop``: one run: retrieval, model calls and tool calls (``AgentLoop``).
- ``backends``: where model calls and searches go (executor pods, an external API, knowledge).
- ``tools``, ``mcp_tools``, ``a2a_tools``: the tools an agent may call.

State:

- ``model``: the domain types (agents, tasks, events, steps, chunks); no protobuf.
- ``store``: task state in Postgres (create, claim, a run's writes, end, release, read).
- ``recovery``: tasks whose worker was lost (the outcome policy), and retention.
- ``follow``: streams following a task, woken as its events commit.
- ``rows``: the row mapping and event/outbox writes ``store`` and ``recovery`` share.
- ``registry``: registered agents (Postgres) and Agent manifests.
- ``db``: the connection pool and migrations; ``outbox``: events committed with their change.
- ``events``, ``kafka``: topic names, the envelope, the idempotent consumer.
- ``peers``, ``endpoints``: channels to executor pods and the knowledge service; pod choice.
- ``provider``: an external OpenAI-compatible API.
- ``metrics``: the service's Prometheus metrics; ``testing``: helpers for tests.
"""

__all__: list[str] = []
