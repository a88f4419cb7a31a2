-- Documents and their versions. A document is named by (tenant, knowledge
-- base, document id); each upload of new bytes is a version, indexed by a
-- worker that holds a lease on it while it works.
-- depends:
CREATE TABLE kb_documents (
    tenant          text        NOT NULL,
    knowledge_base  text        NOT NULL,
    document_id     text        NOT NULL,
    latest_version  integer     NOT NULL DEFAULT 0,
    -- The version searches serve; 0 until one is READY.
    ready_version   integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, knowledge_base, document_id)
);

CREATE TABLE kb_versions (
    id              bigserial   PRIMARY KEY,
    tenant          text        NOT NULL,
    knowledge_base  text        NOT NULL,
    document_id     text        NOT NULL,
    version         integer     NOT NULL,
    title           text        NOT NULL DEFAULT '',
    metadata        jsonb       NOT NULL DEFAULT '{}',
    content_type    text        NOT NULL,
    size_bytes      bigint      NOT NULL,
    content_sha256  text        NOT NULL,
    object_key      text        NOT NULL,
    state           text        NOT NULL DEFAULT 'PENDING'
        CHECK (state IN ('PENDING', 'INDEXING', 'READY', 'FAILED', 'SUPERSEDED')),
    error           text        NOT NULL DEFAULT '',
    chunks          integer     NOT NULL DEFAULT 0,
    chunks_done     integer     NOT NULL DEFAULT 0,
    attempts        integer     NOT NULL DEFAULT 0,
    worker          text,
    lease_until     timestamptz,
    queued_at       timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, knowledge_base, document_id, version),
    FOREIGN KEY (tenant, knowledge_base, document_id)
        REFERENCES kb_documents (tenant, knowledge_base, document_id) ON DELETE CASCADE
);

-- What the reaper looks at: versions not yet done.
CREATE INDEX kb_versions_open ON kb_versions (state, queued_at)
    WHERE state IN ('PENDING', 'INDEXING');
