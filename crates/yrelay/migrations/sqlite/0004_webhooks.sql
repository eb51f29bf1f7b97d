-- Webhook deliveries, each written here before it is attempted (an
-- outbox): retried until sent or given up, at most one attempt at a time
-- per target and document (their order is kept), by any instance.
CREATE TABLE webhook_deliveries (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    target      TEXT    NOT NULL,
    space       TEXT    NOT NULL,
    doc         TEXT    NOT NULL,
    event       TEXT    NOT NULL,
    -- the key it is signed with (NULL: unsigned)
    secret      TEXT,
    -- the JSON body, as signed and sent
    body        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    -- when it may be attempted (again)
    next_at     INTEGER NOT NULL,
    -- pending | sent | failed (given up)
    status      TEXT    NOT NULL DEFAULT 'pending',
    last_error  TEXT,
    -- an instance attempting it holds it until then
    lease_until INTEGER
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_at);
CREATE INDEX webhook_deliveries_by_doc ON webhook_deliveries (target, space, doc, id);

-- Webhooks a space registered for its own documents (besides --webhook).
CREATE TABLE space_webhooks (
    space  TEXT NOT NULL,
    url    TEXT NOT NULL,
    secret TEXT,
    PRIMARY KEY (space, url)
);
