ALTER TABLE tasks DROP COLUMN citations;
