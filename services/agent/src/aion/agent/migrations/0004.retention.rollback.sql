DROP INDEX IF EXISTS processed_events_age;
DROP INDEX IF EXISTS tasks_finished;
DROP INDEX IF EXISTS tasks_tenant_active;
DROP INDEX IF EXISTS tasks_ready;
ALTER TABLE tasks DROP COLUMN IF EXISTS ready_on;
