-- Documents deleted, and when: an update that builds on what such a
-- document held can never show up, and is refused.
CREATE TABLE doc_tombstones (
    space      TEXT    NOT NULL,
    doc        TEXT    NOT NULL,
    deleted_at INTEGER NOT NULL,
    PRIMARY KEY (space, doc)
) WITHOUT ROWID;
