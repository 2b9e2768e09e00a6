-- 8: one mailbox, one subscriber. `email_norm` becomes the mailbox's key
-- (SubscriberEmail::normalized: letter case folded, needless quotes dropped, an international
-- domain in its IDNA form), which SQL cannot compute: store::rekey recomputes every key right
-- after this file, in the same transaction, and merges the rows that turn out to be one
-- mailbox. Each merge is kept here, so the operator can see what was done.
CREATE TABLE subscriber_merges (
    id INTEGER PRIMARY KEY,
    kept_id INTEGER NOT NULL,
    kept_email TEXT NOT NULL,
    removed_id INTEGER NOT NULL,
    removed_email TEXT NOT NULL,
    removed_status TEXT NOT NULL,
    status_after TEXT NOT NULL,
    merged_at TEXT NOT NULL
);
