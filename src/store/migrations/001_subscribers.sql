-- 1: the subscriber list. `email` is kept as given, `email_norm` is the lower-cased
-- comparison key. Timestamps are RFC 3339 UTC.
CREATE TABLE subscribers (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL,
    email_norm TEXT NOT NULL UNIQUE,
    name TEXT,
    status TEXT NOT NULL CHECK (status IN ('active', 'unsubscribed', 'bounced')),
    source TEXT NOT NULL CHECK (source IN ('cli', 'import', 'web')),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    unsubscribed_at TEXT
);
CREATE INDEX subscribers_by_status ON subscribers (status);
