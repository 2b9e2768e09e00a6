-- 2: issues, the comparisons each issue carried, and deliveries (see store/ledger.rs).
CREATE TABLE issues (
    number INTEGER PRIMARY KEY,
    slot TEXT NOT NULL UNIQUE,
    window_after TEXT NOT NULL,
    cutoff TEXT NOT NULL,
    subject TEXT NOT NULL,
    preheader TEXT NOT NULL,
    comparison_count INTEGER NOT NULL,
    html_parts TEXT NOT NULL,
    text_parts TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('sending', 'paused', 'complete', 'skipped')),
    created_at TEXT NOT NULL,
    completed_at TEXT,
    note TEXT
);
-- A slug can be in one issue only: the UNIQUE constraint is the 'never in two issues' rule.
CREATE TABLE issue_comparisons (
    issue INTEGER NOT NULL REFERENCES issues (number),
    position INTEGER NOT NULL,
    slug TEXT NOT NULL UNIQUE
);
CREATE TABLE deliveries (
    issue INTEGER NOT NULL REFERENCES issues (number),
    subscriber_id INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'skipped')),
    failure TEXT CHECK (failure IN ('temporary', 'permanent')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    last_reply TEXT,
    sent_at TEXT,
    PRIMARY KEY (issue, subscriber_id)
) WITHOUT ROWID;
-- No index on state: every delivery changes state twice, and the queries that filter
-- on it walk one issue's rows in key order anyway.
CREATE INDEX deliveries_by_subscriber ON deliveries (subscriber_id);
