-- The agent service's tables: the registry, tasks with their events and steps,
-- the transactional outbox and the record of processed events.
-- depends:

CREATE TABLE agents (
    tenant             text NOT NULL,
    name               text NOT NULL,
    model              text NOT NULL,
    model_task         text NOT NULL DEFAULT 'generate',
    instructions       text NOT NULL DEFAULT '',
    description        text NOT NULL DEFAULT '',
    privacy            text NOT NULL DEFAULT 'local-only',
    knowledge_bases    text[] NOT NULL DEFAULT '{}',
    executor_endpoints text[] NOT NULL DEFAULT '{}',
    max_tokens         integer NOT NULL DEFAULT 256,
    node_pool          text NOT NULL DEFAULT '',
    tools              jsonb NOT NULL DEFAULT '[]',
    max_steps          integer NOT NULL DEFAULT 4,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, name)
);

CREATE TABLE tasks (
    id                uuid PRIMARY KEY,
    tenant            text NOT NULL,
    agent             text NOT NULL,
    input             text NOT NULL,
    idempotency_key   text,
    options           jsonb NOT NULL DEFAULT '{}',
    decision          jsonb NOT NULL DEFAULT '{}',
    model             text NOT NULL,
    asynchronous      boolean NOT NULL DEFAULT false,
    state             text NOT NULL DEFAULT 'QUEUED'
                      CHECK (state IN ('QUEUED', 'RUNNING', 'OK', 'ERROR', 'TIMEOUT', 'CANCELED')),
    attempts          integer NOT NULL DEFAULT 0,
    max_attempts      integer NOT NULL DEFAULT 3,
    -- Who runs the task and until when; another worker may take it over once it passes.
    lease_owner       text,
    lease_until       timestamptz,
    deadline          timestamptz NOT NULL,
    cancel_requested  boolean NOT NULL DEFAULT false,
    last_seq          integer NOT NULL DEFAULT 0,
    output            text NOT NULL DEFAULT '',
    prompt_tokens     integer NOT NULL DEFAULT 0,
    completion_tokens integer NOT NULL DEFAULT 0,
    cost_usd          double precision NOT NULL DEFAULT 0,
    latency_ms        integer NOT NULL DEFAULT 0,
    error_code        text,
    error_message     text,
    error_retriable   boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz
);

CREATE UNIQUE INDEX tasks_idempotency ON tasks (tenant, agent, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_leases ON tasks (lease_until) WHERE state IN ('QUEUED', 'RUNNING');
CREATE INDEX tasks_queued_deadline ON tasks (deadline) WHERE state = 'QUEUED';

-- What a stream replays: every event of a task, numbered from 1.
CREATE TABLE task_events (
    task_id    uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq        integer NOT NULL,
    attempt    integer NOT NULL,
    kind       text NOT NULL,
    text       text NOT NULL DEFAULT '',
    step       integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, seq)
);

-- One row per model call or tool call of the agent loop, with what it cost.
CREATE TABLE task_steps (
    task_id           uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt           integer NOT NULL,
    step              integer NOT NULL,
    kind              text NOT NULL CHECK (kind IN ('model', 'tool')),
    name              text NOT NULL DEFAULT '',
    worker            text NOT NULL,
    input             jsonb NOT NULL DEFAULT '{}',
    output            text NOT NULL DEFAULT '',
    error             text,
    prompt_tokens     integer NOT NULL DEFAULT 0,
    completion_tokens integer NOT NULL DEFAULT 0,
    cost_usd          double precision NOT NULL DEFAULT 0,
    latency_ms        integer NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, attempt, step)
);

-- Events written in the same transaction as the change they describe; the
-- publisher moves them to Kafka in id order and deletes them.
CREATE TABLE outbox (
    id         bigserial PRIMARY KEY,
    topic      text NOT NULL,
    key        text NOT NULL,
    event_id   uuid NOT NULL,
    payload    bytea NOT NULL,
    headers    jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Events a consumer group handled, so that a redelivery has no effect.
CREATE TABLE processed_events (
    consumer     text NOT NULL,
    event_id     text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
