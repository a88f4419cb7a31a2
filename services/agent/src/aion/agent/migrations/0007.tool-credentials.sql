-- The credentials of an agent's MCP and A2A servers: [{"url", "header", "value"}], the
-- HTTP header sent on every request to the server at url. Only the operator registers
-- them (from the Secrets of the Agent's spec.toolCredentials); Agents.Apply cannot. The
-- values are secret: GetAgent and ListAgents never return this column, and a task's
-- steps never hold it.
-- depends: 0005.routing-targets

ALTER TABLE agents ADD COLUMN tool_credentials jsonb NOT NULL DEFAULT '[]'::jsonb;
