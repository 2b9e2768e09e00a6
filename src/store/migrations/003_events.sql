-- Subscriber events (bounces, complaints, unsubscribes by channel) against the delivery
-- they concern, and the inbound messages already handled.
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    subscriber_id INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    issue INTEGER REFERENCES issues (number),
    kind TEXT NOT NULL CHECK (kind IN ('hard_bounce', 'soft_bounce', 'complaint', 'unsubscribe')),
    channel TEXT CHECK (channel IN ('one-click', 'page', 'mailto')),
    -- Where the event was seen: the SMTP reply during the send, inbound mail, the web.
    source TEXT NOT NULL CHECK (source IN ('smtp', 'inbound', 'web')),
    status TEXT,
    diagnostic TEXT,
    at TEXT NOT NULL
);
CREATE INDEX events_by_issue ON events (issue, kind);
CREATE INDEX events_by_subscriber ON events (subscriber_id, kind);
-- Inbound messages already handled, by Message-ID or by SHA-256 of the bytes.
CREATE TABLE inbound_processed (
    key TEXT PRIMARY KEY,
    outcome TEXT NOT NULL,
    processed_at TEXT NOT NULL
) WITHOUT ROWID;
