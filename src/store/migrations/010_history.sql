-- 10: history with a bounded cost. Delivery rows get lean (timestamps as integer seconds,
-- the SMTP reply kept only when it says more than a plain 250), and each issue gets a row
-- of totals kept up to date by triggers in the same transaction as the change it counts,
-- so listing issues never scans deliveries and folding old rows away loses no number.
-- Every statement names its columns: later migrations add columns to `deliveries`.

CREATE TABLE deliveries_new (
    issue INTEGER NOT NULL REFERENCES issues (number),
    subscriber_id INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'skipped')),
    failure TEXT CHECK (failure IN ('temporary', 'permanent')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    -- NULL for a plain 250 (the common case); otherwise the server's last words.
    last_reply TEXT,
    -- Unix seconds.
    sent_at INTEGER,
    bounce_held INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (issue, subscriber_id)
) WITHOUT ROWID;
INSERT INTO deliveries_new
    (issue, subscriber_id, state, failure, attempts, next_attempt_ms, last_reply, sent_at,
     bounce_held)
SELECT issue, subscriber_id, state, failure, attempts, next_attempt_ms,
       CASE WHEN state = 'sent' AND (last_reply LIKE '250 %' OR last_reply LIKE '250-%'
                                     OR last_reply = '250')
            THEN NULL ELSE last_reply END,
       CAST(strftime('%s', sent_at) AS INTEGER),
       bounce_held
FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;
CREATE INDEX deliveries_by_subscriber ON deliveries (subscriber_id);

-- One row per issue. Delivery columns count rows by state; event columns count readers
-- (a reader who bounced twice on one issue counts once). `compacted_at` (unix seconds) is
-- set when the issue's per-recipient rows were folded away; `events_compacted_at` when its
-- events were.
CREATE TABLE issue_totals (
    issue INTEGER PRIMARY KEY REFERENCES issues (number),
    pending INTEGER NOT NULL DEFAULT 0,
    untried INTEGER NOT NULL DEFAULT 0,
    sending INTEGER NOT NULL DEFAULT 0,
    sent INTEGER NOT NULL DEFAULT 0,
    failed_permanent INTEGER NOT NULL DEFAULT 0,
    failed_temporary INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    hard_bounces INTEGER NOT NULL DEFAULT 0,
    soft_bounces INTEGER NOT NULL DEFAULT 0,
    complaints INTEGER NOT NULL DEFAULT 0,
    unsub_one_click INTEGER NOT NULL DEFAULT 0,
    unsub_page INTEGER NOT NULL DEFAULT 0,
    unsub_mailto INTEGER NOT NULL DEFAULT 0,
    unsub_other INTEGER NOT NULL DEFAULT 0,
    compacted_at INTEGER,
    events_compacted_at INTEGER
);

INSERT INTO issue_totals (issue) SELECT number FROM issues;
UPDATE issue_totals SET
    pending = (SELECT count(*) FROM deliveries d WHERE d.issue = issue_totals.issue
                   AND d.state = 'pending'),
    untried = (SELECT count(*) FROM deliveries d WHERE d.issue = issue_totals.issue
                   AND d.state = 'pending' AND d.attempts = 0),
    sending = (SELECT count(*) FROM deliveries d WHERE d.issue = issue_totals.issue
                   AND d.state = 'sending'),
    sent = (SELECT count(*) FROM deliveries d WHERE d.issue = issue_totals.issue
                AND d.state = 'sent'),
    failed_permanent = (SELECT count(*) FROM deliveries d WHERE d.issue = issue_totals.issue
                            AND d.state = 'failed' AND d.failure IS NOT 'temporary'),
    failed_temporary = (SELECT count(*) FROM deliveries d WHERE d.issue = issue_totals.issue
                            AND d.state = 'failed' AND d.failure IS 'temporary'),
    skipped = (SELECT count(*) FROM deliveries d WHERE d.issue = issue_totals.issue
                   AND d.state = 'skipped'),
    hard_bounces = (SELECT count(DISTINCT subscriber_id) FROM events e
                        WHERE e.issue = issue_totals.issue AND e.kind = 'hard_bounce'),
    soft_bounces = (SELECT count(DISTINCT subscriber_id) FROM events e
                        WHERE e.issue = issue_totals.issue AND e.kind = 'soft_bounce'),
    complaints = (SELECT count(DISTINCT subscriber_id) FROM events e
                      WHERE e.issue = issue_totals.issue AND e.kind = 'complaint'),
    unsub_one_click = (SELECT count(DISTINCT subscriber_id) FROM events e
                           WHERE e.issue = issue_totals.issue AND e.kind = 'unsubscribe'
                             AND e.channel IS 'one-click'),
    unsub_page = (SELECT count(DISTINCT subscriber_id) FROM events e
                      WHERE e.issue = issue_totals.issue AND e.kind = 'unsubscribe'
                        AND e.channel IS 'page'),
    unsub_mailto = (SELECT count(DISTINCT subscriber_id) FROM events e
                        WHERE e.issue = issue_totals.issue AND e.kind = 'unsubscribe'
                          AND e.channel IS 'mailto'),
    unsub_other = (SELECT count(DISTINCT subscriber_id) FROM events e
                       WHERE e.issue = issue_totals.issue AND e.kind = 'unsubscribe'
                         AND coalesce(e.channel NOT IN ('one-click', 'page', 'mailto'), 1));

CREATE TRIGGER issue_totals_for_new_issue AFTER INSERT ON issues
BEGIN
    INSERT INTO issue_totals (issue) VALUES (NEW.number);
END;

CREATE TRIGGER issue_totals_delivery_added AFTER INSERT ON deliveries
BEGIN
    UPDATE issue_totals SET
        pending = pending + (NEW.state = 'pending'),
        untried = untried + (NEW.state = 'pending' AND NEW.attempts = 0),
        sending = sending + (NEW.state = 'sending'),
        sent = sent + (NEW.state = 'sent'),
        failed_permanent = failed_permanent
            + (NEW.state = 'failed' AND NEW.failure IS NOT 'temporary'),
        failed_temporary = failed_temporary
            + (NEW.state = 'failed' AND NEW.failure IS 'temporary'),
        skipped = skipped + (NEW.state = 'skipped')
    WHERE issue = NEW.issue;
END;

CREATE TRIGGER issue_totals_delivery_changed AFTER UPDATE OF state, failure, attempts ON deliveries
WHEN OLD.state IS NOT NEW.state OR OLD.failure IS NOT NEW.failure
  OR (OLD.attempts = 0) IS NOT (NEW.attempts = 0)
BEGIN
    UPDATE issue_totals SET
        pending = pending + (NEW.state = 'pending') - (OLD.state = 'pending'),
        untried = untried + (NEW.state = 'pending' AND NEW.attempts = 0)
                          - (OLD.state = 'pending' AND OLD.attempts = 0),
        sending = sending + (NEW.state = 'sending') - (OLD.state = 'sending'),
        sent = sent + (NEW.state = 'sent') - (OLD.state = 'sent'),
        failed_permanent = failed_permanent
            + (NEW.state = 'failed' AND NEW.failure IS NOT 'temporary')
            - (OLD.state = 'failed' AND OLD.failure IS NOT 'temporary'),
        failed_temporary = failed_temporary
            + (NEW.state = 'failed' AND NEW.failure IS 'temporary')
            - (OLD.state = 'failed' AND OLD.failure IS 'temporary'),
        skipped = skipped + (NEW.state = 'skipped') - (OLD.state = 'skipped')
    WHERE issue = NEW.issue;
END;

-- A finished delivery that is deleted (compaction, an erased reader) stays counted: the
-- mail went out. One that was still to be sent will never be, so it counts as skipped.
CREATE TRIGGER issue_totals_delivery_dropped AFTER DELETE ON deliveries
WHEN OLD.state IN ('pending', 'sending')
BEGIN
    UPDATE issue_totals SET
        pending = pending - (OLD.state = 'pending'),
        untried = untried - (OLD.state = 'pending' AND OLD.attempts = 0),
        sending = sending - (OLD.state = 'sending'),
        skipped = skipped + 1
    WHERE issue = OLD.issue;
END;

-- Events count readers, so only a reader's first event of a kind (and channel) on an
-- issue adds one. Deleted events stay counted.
CREATE TRIGGER issue_totals_event_added AFTER INSERT ON events
WHEN NEW.issue IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM events e
    WHERE e.subscriber_id = NEW.subscriber_id AND e.kind = NEW.kind AND e.issue = NEW.issue
      AND e.channel IS NEW.channel AND e.id <> NEW.id)
BEGIN
    UPDATE issue_totals SET
        hard_bounces = hard_bounces + (NEW.kind = 'hard_bounce'),
        soft_bounces = soft_bounces + (NEW.kind = 'soft_bounce'),
        complaints = complaints + (NEW.kind = 'complaint'),
        unsub_one_click = unsub_one_click + (NEW.kind = 'unsubscribe' AND NEW.channel IS 'one-click'),
        unsub_page = unsub_page + (NEW.kind = 'unsubscribe' AND NEW.channel IS 'page'),
        unsub_mailto = unsub_mailto + (NEW.kind = 'unsubscribe' AND NEW.channel IS 'mailto'),
        unsub_other = unsub_other + (NEW.kind = 'unsubscribe'
            AND coalesce(NEW.channel NOT IN ('one-click', 'page', 'mailto'), 1))
    WHERE issue = NEW.issue;
END;

-- Addresses of readers who asked to be forgotten, as salted hashes of the mailbox key:
-- a later import, signup or `subscribers add` of one is refused unless the operator says so.
CREATE TABLE erased_addresses (
    hash TEXT PRIMARY KEY,
    erased_at INTEGER NOT NULL,
    reason TEXT NOT NULL
) WITHOUT ROWID;
