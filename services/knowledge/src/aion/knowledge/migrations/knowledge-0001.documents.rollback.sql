DROP TABLE kb_versions;
DROP TABLE kb_documents;
