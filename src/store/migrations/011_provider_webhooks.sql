-- 11: relays' event webhooks. The signed requests already taken (a Mailgun token, the
-- signature of a SendGrid or generic post), so one replayed inside the freshness window is
-- refused; rows older than the window are pruned as new ones arrive.
CREATE TABLE webhook_replays (
    provider TEXT NOT NULL,
    token TEXT NOT NULL,
    seen_at TEXT NOT NULL,
    PRIMARY KEY (provider, token)
) WITHOUT ROWID;
CREATE INDEX webhook_replays_by_age ON webhook_replays (seen_at);
-- The id a relay gave a message in its 250 reply (`250 Ok <id>`), so an event that names
-- only that id still finds its delivery.
CREATE TABLE relay_message_ids (
    relay_id TEXT PRIMARY KEY,
    issue INTEGER NOT NULL REFERENCES issues (number),
    subscriber_id INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    recorded_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX relay_message_ids_by_subscriber ON relay_message_ids (subscriber_id);
CREATE INDEX relay_message_ids_by_issue ON relay_message_ids (issue);
