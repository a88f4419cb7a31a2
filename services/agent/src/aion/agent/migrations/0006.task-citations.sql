-- The citations of a task's result: the passages of knowledge bases its run put into
-- the model's context, each once, in order of first use, as a JSON array of objects
-- with the fields of aion.v1.Citation (knowledge_base, document_id, version,
-- chunk_index, char_start, char_end, title, score). Written when the run ends
-- (TaskStore.finish); empty for tasks that used no knowledge and for those from
-- before this migration.
-- depends: 0005.routing-targets

ALTER TABLE tasks ADD COLUMN citations jsonb NOT NULL DEFAULT '[]';
