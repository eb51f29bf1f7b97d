-- When the document was moved to the trash (NULL: it is not): a trashed
-- document keeps everything, is not served, listed or written, and is
-- purged once the trash retention has passed.
ALTER TABLE docs ADD COLUMN trashed_at BIGINT;

-- Who wrote each update (the token's subject), when auth names one.
ALTER TABLE doc_updates ADD COLUMN editor TEXT;

-- Updates a compaction merged into the snapshot, moved here in the same
-- transaction and kept for the exact history window (`seq`: the order they
-- were moved in, per document the order of its compactions, which a lease
-- keeps one at a time).
CREATE TABLE doc_history (
    seq        BIGSERIAL PRIMARY KEY,
    space      TEXT   NOT NULL,
    doc        TEXT   NOT NULL,
    data       BYTEA  NOT NULL,
    created_at BIGINT NOT NULL,
    editor     TEXT
);

CREATE INDEX doc_history_by_doc ON doc_history (space, doc, created_at);

-- A document's full state at a moment (one v1 update).
CREATE TABLE doc_versions (
    id          BIGSERIAL PRIMARY KEY,
    space       TEXT   NOT NULL,
    doc         TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    label       TEXT,
    -- JSON array: who wrote updates since the previous version
    editors     TEXT   NOT NULL DEFAULT '[]',
    data        BYTEA  NOT NULL,
    -- the history it holds: every doc_history row of the document up to
    -- this seq (versions a compaction writes; NULL for the others)
    history_seq BIGINT
);

CREATE INDEX doc_versions_by_doc ON doc_versions (space, doc, created_at);

-- A document written before history existed starts with its snapshot as
-- its first version.
INSERT INTO doc_versions (space, doc, created_at, data, history_seq)
SELECT s.space, s.doc, d.updated_at, s.data, 0
FROM doc_snapshots s JOIN docs d ON d.space = s.space AND d.doc = s.doc;
