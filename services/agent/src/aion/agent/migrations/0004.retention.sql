-- depends: 0002.step-model-time

-- Fair dispatch and retention.
-- ready_on: the work topic whose record made a queued task ready; each replica's
-- dispatcher claims ready tasks of its topic, the least busy tenant first.
ALTER TABLE tasks ADD COLUMN ready_on text;
CREATE INDEX tasks_ready ON tasks (ready_on, tenant, created_at)
    WHERE state = 'QUEUED' AND ready_on IS NOT NULL;
-- The running tasks of a tenant (and the reserved synchronous ones), for its limit.
CREATE INDEX tasks_tenant_active ON tasks (tenant) WHERE state IN ('QUEUED', 'RUNNING');
-- Retention: finished tasks by end time, processed events by age.
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX processed_events_age ON processed_events (processed_at);
