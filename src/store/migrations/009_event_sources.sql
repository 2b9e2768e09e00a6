-- 9: events from more places. Provider webhooks (`webhook`, channel `relay`: the relay's
-- own unsubscribe or suppression), the API (`api`, channel `api`) and the operator's
-- `subscribers unsubscribe` (`cli`, channel `cli`) record subscriber events through the
-- same path as inbound mail and the web. SQLite cannot alter a CHECK
-- constraint, so the table is rebuilt (foreign keys are off during migrations) with the
-- same rows, ids and indexes. Later migrations add triggers to this table, never before.
CREATE TABLE events_new (
    id INTEGER PRIMARY KEY,
    subscriber_id INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    issue INTEGER REFERENCES issues (number),
    kind TEXT NOT NULL CHECK (kind IN ('hard_bounce', 'soft_bounce', 'complaint', 'unsubscribe')),
    channel TEXT CHECK (channel IN ('one-click', 'page', 'mailto', 'relay', 'api', 'cli')),
    -- Where the event was seen: the SMTP reply during the send, inbound mail, the web, a
    -- relay's signed webhook, the API, the command line.
    source TEXT NOT NULL CHECK (source IN ('smtp', 'inbound', 'web', 'webhook', 'api', 'cli')),
    status TEXT,
    diagnostic TEXT,
    at TEXT NOT NULL
);
INSERT INTO events_new (id, subscriber_id, issue, kind, channel, source, status, diagnostic, at)
SELECT id, subscriber_id, issue, kind, channel, source, status, diagnostic, at FROM events;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;
CREATE INDEX events_by_issue ON events (issue, kind);
CREATE INDEX events_by_subscriber ON events (subscriber_id, kind);
