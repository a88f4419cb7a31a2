-- The W3C trace context of a task ({"traceparent": ..., "tracestate": ...}): the one
-- it was created in (the Start or Submit call), so that every span of the task shares
-- its trace id (aion.v1.TaskResult.trace_id, `aionctl get TASK --trace`). The work
-- topic's consumer moves it to its own span (same trace), which a run started later
-- by any replica's dispatcher then continues; the outbox events of the task are sent
-- in it when they are written outside a span (recovery). Empty for tasks created
-- before this column, or outside a trace.
-- depends: 0006.task-citations 0007.tool-credentials

ALTER TABLE tasks ADD COLUMN trace_context jsonb NOT NULL DEFAULT '{}'::jsonb;
