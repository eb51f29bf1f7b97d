-- Document metadata: one row per document that has ever been written.
CREATE TABLE docs (
    space           TEXT    NOT NULL,
    doc             TEXT    NOT NULL,
    title           TEXT,
    blocked         BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    -- bytes held: snapshot + appended updates
    size            BIGINT  NOT NULL DEFAULT 0,
    -- appended updates not yet merged into the snapshot
    pending_updates BIGINT  NOT NULL DEFAULT 0,
    -- the log cursor up to which the store holds the log
    log_cursor      TEXT,
    PRIMARY KEY (space, doc)
);

CREATE INDEX docs_by_space_updated ON docs (space, updated_at);
CREATE INDEX docs_with_pending ON docs (pending_updates) WHERE pending_updates > 0;

-- The compacted state of a document (one v1 update).
CREATE TABLE doc_snapshots (
    space TEXT  NOT NULL,
    doc   TEXT  NOT NULL,
    data  BYTEA NOT NULL,
    PRIMARY KEY (space, doc)
);

-- Updates appended since the snapshot, in commit order.
CREATE TABLE doc_updates (
    id         BIGSERIAL PRIMARY KEY,
    space      TEXT   NOT NULL,
    doc        TEXT   NOT NULL,
    data       BYTEA  NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX doc_updates_by_doc ON doc_updates (space, doc, id);
