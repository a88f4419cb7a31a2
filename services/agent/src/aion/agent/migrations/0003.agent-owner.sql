-- Who registered each agent: "<namespace>/<uid>" of the Agent resource the operator
-- registered it for, or "api" for Agents.Apply (and the agents file read at start).
-- An agent owned by an Agent resource is changed or deregistered only from its
-- namespace, and Agents.Apply never replaces it (registry.PostgresRegistry.put).
-- Rows registered before this migration: an executor address the operator wrote
-- (aion-executor-<name>.<namespace>.svc:<port>) names its namespace; the rest came
-- through the API.
-- depends: 0002.step-model-time

ALTER TABLE agents ADD COLUMN owner text NOT NULL DEFAULT 'api';

UPDATE agents SET owner = split_part(executor_endpoints[1], '.', 2) || '/'
 WHERE executor_endpoints[1] LIKE 'aion-executor-%.%.svc:%';
