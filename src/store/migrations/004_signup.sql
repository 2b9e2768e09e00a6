-- 4: signup with double opt-in. SQLite cannot alter a CHECK constraint, so the subscriber
-- table is rebuilt (the migration runs with foreign keys off, see store::migrate) to admit
-- the `pending` status and the `api` source, and to hold the consent record: when and how
-- the subscriber signed up, when they confirmed, and (only if configured) from which IP.
CREATE TABLE subscribers_new (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL,
    email_norm TEXT NOT NULL UNIQUE,
    name TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'active', 'unsubscribed', 'bounced')),
    source TEXT NOT NULL CHECK (source IN ('cli', 'import', 'web', 'api')),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    unsubscribed_at TEXT,
    signed_up_at TEXT NOT NULL,
    confirmed_at TEXT,
    signup_ip TEXT
);
INSERT INTO subscribers_new
    (id, email, email_norm, name, status, source, created_at, updated_at, unsubscribed_at,
     signed_up_at)
SELECT id, email, email_norm, name, status, source, created_at, updated_at, unsubscribed_at,
       created_at
FROM subscribers;
DROP TABLE subscribers;
ALTER TABLE subscribers_new RENAME TO subscribers;
CREATE INDEX subscribers_by_status ON subscribers (status);

-- One row per signup request that asked for a confirmation mail: the mail's outbox entry
-- (sent by the web process, retried, surviving restarts) and what the confirmation link
-- proves. `source` and `signup_ip` are copied to the subscriber when they confirm.
CREATE TABLE confirmations (
    id INTEGER PRIMARY KEY,
    subscriber_id INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    source TEXT NOT NULL CHECK (source IN ('web', 'api')),
    signup_ip TEXT,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    mail_state TEXT NOT NULL CHECK (mail_state IN ('queued', 'sent', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    last_reply TEXT,
    sent_at TEXT,
    confirmed_at TEXT
);
CREATE INDEX confirmations_queued ON confirmations (next_attempt_ms) WHERE mail_state = 'queued';
CREATE INDEX confirmations_by_subscriber ON confirmations (subscriber_id);
