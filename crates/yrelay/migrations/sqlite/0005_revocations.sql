-- Revokes (POST /v1/access/revoke): every instance reads the new ones and
-- refuses the tokens they cover (issued before them) until they lapse.
CREATE TABLE access_revocations (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    sub    TEXT,
    space  TEXT,
    doc    TEXT,
    at_ms  INTEGER NOT NULL
);

CREATE INDEX access_revocations_at ON access_revocations (at_ms);
