-- How long each model step waited for the model itself (executor or external API),
-- apart from the agent's own work between chunks: what the agent adds is the rest.
-- depends: 0001.initial

ALTER TABLE task_steps ADD COLUMN model_ms integer NOT NULL DEFAULT 0;
