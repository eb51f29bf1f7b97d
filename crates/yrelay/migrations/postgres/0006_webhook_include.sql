-- A space's webhook may ask for the document's JSON in each body.
ALTER TABLE space_webhooks ADD COLUMN include_json BOOLEAN NOT NULL DEFAULT FALSE;
