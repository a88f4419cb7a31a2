ALTER TABLE task_steps DROP COLUMN model_ms;
