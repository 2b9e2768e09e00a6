-- 13: the JSON API's keys and the outgoing webhooks' outbox.
--
-- API keys: only the SHA-256 of each key is kept. `prefix` is the key's public part (the
-- characters before its secret), used to find the row; the secret is compared in constant
-- time against `hash`. A revoked key keeps its row (named in `keys list`) and never verifies.
CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL UNIQUE,
    hash BLOB NOT NULL,
    scopes TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at TEXT
);

-- The outbox of announcements: one row per change to the list or to an issue, written by
-- the triggers below in the same transaction as the change itself, so no caller can make a
-- change without announcing it and no crash can lose one. `subscriber_id` orders delivery
-- per subscriber (it is not a foreign key: an announcement outlives an erased row). Ids are
-- never reused (AUTOINCREMENT): receivers' cursors and the pruning bound compare them, and
-- a table emptied by pruning must not hand out an id a cursor has already passed.
CREATE TABLE webhook_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    subscriber_id INTEGER,
    issue INTEGER,
    data TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX webhook_outbox_by_subscriber ON webhook_outbox (subscriber_id, id);

-- One row per announcement and configured receiver (keyed by its URL), made when the web
-- process or the daemon fans the outbox out; retried with backoff until delivered or 24 h
-- have passed since the first attempt.
CREATE TABLE webhook_deliveries (
    outbox_id INTEGER NOT NULL REFERENCES webhook_outbox (id) ON DELETE CASCADE,
    endpoint TEXT NOT NULL,
    subscriber_id INTEGER,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    first_attempt_at TEXT,
    last_attempt_at TEXT,
    last_status INTEGER,
    last_error TEXT,
    delivered_at TEXT,
    PRIMARY KEY (outbox_id, endpoint)
);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (endpoint, next_attempt_ms)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_subscriber ON webhook_deliveries (endpoint, subscriber_id, outbox_id)
    WHERE state = 'pending';

-- How far each receiver has been fanned out.
CREATE TABLE webhook_cursors (
    endpoint TEXT PRIMARY KEY,
    last_outbox_id INTEGER NOT NULL
) WITHOUT ROWID;

-- The announcements. Timestamps are RFC 3339 UTC like the rest of the database.
CREATE TRIGGER announce_pending AFTER INSERT ON subscribers
WHEN NEW.status = 'pending'
BEGIN
    INSERT INTO webhook_outbox (type, subscriber_id, data, created_at)
    VALUES ('subscriber.pending', NEW.id,
            json_object('id', NEW.id, 'email', NEW.email, 'name', NEW.name,
                        'status', NEW.status, 'source', NEW.source),
            strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;

-- A reader added by the API without double opt-in is confirmed by the operator's system.
CREATE TRIGGER announce_added_confirmed AFTER INSERT ON subscribers
WHEN NEW.status = 'active' AND NEW.source = 'api'
BEGIN
    INSERT INTO webhook_outbox (type, subscriber_id, data, created_at)
    VALUES ('subscriber.confirmed', NEW.id,
            json_object('id', NEW.id, 'email', NEW.email, 'name', NEW.name,
                        'status', NEW.status, 'source', NEW.source),
            strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;

-- Into `active` from any status is `subscriber.confirmed`: a confirmation, including one of
-- a reader who had left and signed up again, or a resubscribe.
CREATE TRIGGER announce_status AFTER UPDATE OF status ON subscribers
WHEN NEW.status IS NOT OLD.status
     AND (NEW.status = 'pending'
          OR NEW.status = 'active'
          OR NEW.status = 'bounced')
BEGIN
    INSERT INTO webhook_outbox (type, subscriber_id, data, created_at)
    VALUES (CASE NEW.status WHEN 'pending' THEN 'subscriber.pending'
                            WHEN 'active' THEN 'subscriber.confirmed'
                            ELSE 'subscriber.bounced' END,
            NEW.id,
            json_object('id', NEW.id, 'email', NEW.email, 'name', NEW.name,
                        'status', NEW.status, 'source', NEW.source),
            strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;

-- Unsubscribes and complaints, from every door that records an event (inbound mail, the
-- web, the API, a relay's webhook), with the channel they came by.
CREATE TRIGGER announce_event AFTER INSERT ON events
WHEN NEW.kind IN ('unsubscribe', 'complaint')
BEGIN
    INSERT INTO webhook_outbox (type, subscriber_id, issue, data, created_at)
    SELECT CASE NEW.kind WHEN 'unsubscribe' THEN 'subscriber.unsubscribed'
                         ELSE 'subscriber.complained' END,
           s.id, NEW.issue,
           json_object('id', s.id, 'email', s.email, 'name', s.name, 'status',
                       'unsubscribed',
                       'channel', NEW.channel, 'source', NEW.source, 'issue', NEW.issue),
           strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
    FROM subscribers s WHERE s.id = NEW.subscriber_id;
END;

CREATE TRIGGER announce_issue_created AFTER INSERT ON issues
WHEN NEW.state <> 'skipped'
BEGIN
    INSERT INTO webhook_outbox (type, issue, data, created_at)
    VALUES ('issue.created', NEW.number,
            json_object('number', NEW.number, 'subject', NEW.subject, 'slot', NEW.slot,
                        'comparisons', NEW.comparison_count),
            strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;

CREATE TRIGGER announce_issue_state AFTER UPDATE OF state ON issues
WHEN NEW.state IS NOT OLD.state AND NEW.state IN ('complete', 'paused')
BEGIN
    INSERT INTO webhook_outbox (type, issue, data, created_at)
    VALUES (CASE NEW.state WHEN 'complete' THEN 'issue.completed' ELSE 'issue.paused' END,
            NEW.number,
            json_object('number', NEW.number, 'subject', NEW.subject, 'slot', NEW.slot,
                        'state', NEW.state, 'reason', NEW.note,
                        'sent', (SELECT sent FROM issue_totals WHERE issue = NEW.number),
                        'failed', (SELECT failed_permanent + failed_temporary
                                   FROM issue_totals WHERE issue = NEW.number)),
            strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;
