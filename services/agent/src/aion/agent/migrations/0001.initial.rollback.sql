DROP TABLE processed_events;
DROP TABLE outbox;
DROP TABLE task_steps;
DROP TABLE task_events;
DROP TABLE tasks;
DROP TABLE agents;
