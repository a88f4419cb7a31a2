ALTER TABLE agents DROP COLUMN budget_usd_per_task, DROP COLUMN p95_target_ms;
