-- The routing targets of an Agent's spec.routing: what one task may cost (USD) and the
-- 95th-percentile latency aimed for; NULL when the Agent names none. Registered by the
-- operator and Agents.Apply and shown by GetAgent, for the router to consume (issue 15).
-- depends: 0003.agent-owner 0004.retention

ALTER TABLE agents ADD COLUMN budget_usd_per_task double precision,
                   ADD COLUMN p95_target_ms integer;
