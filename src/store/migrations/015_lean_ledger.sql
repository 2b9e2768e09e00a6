-- 15: a delivery row small enough that a million-reader issue costs under 25 MB while its
-- rows are kept (docs/performance.md). Two changes:
--
-- * `state` is a small integer instead of text. SQLite stores 0 and 1 in no bytes at all,
--   so the two states nearly every row is in cost nothing:
--       0 pending   1 sent   2 sending   3 failed   4 skipped
--   (`store::ledger::STATE_NAMES` names them for output.)
-- * No index by subscriber and no foreign key to `subscribers`. The index was a third of
--   every row's size; what used it (erasure, a reader's history, the soft-bounce rule, the
--   latest issue a reader was sent) now looks a reader up issue by issue through the
--   primary key, one seek per issue ever sent. A deleted reader's rows go by the trigger
--   below instead of by the foreign key's cascade, which without the index would have read
--   every row of the table for each reader deleted.
--
-- Every row is carried over; every statement names its columns.

CREATE TABLE deliveries_new (
    issue INTEGER NOT NULL REFERENCES issues (number),
    subscriber_id INTEGER NOT NULL,
    state INTEGER NOT NULL CHECK (state BETWEEN 0 AND 4),
    failure TEXT CHECK (failure IN ('temporary', 'permanent')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    -- NULL for a plain 250 (the common case); otherwise the server's last words.
    last_reply TEXT,
    -- Unix seconds.
    sent_at INTEGER,
    bounce_held INTEGER NOT NULL DEFAULT 0,
    -- The relay a delivery was last handed to (relays.id).
    relay INTEGER,
    PRIMARY KEY (issue, subscriber_id)
) WITHOUT ROWID;
INSERT INTO deliveries_new
    (issue, subscriber_id, state, failure, attempts, next_attempt_ms, last_reply, sent_at,
     bounce_held, relay)
SELECT issue, subscriber_id,
       CASE state WHEN 'pending' THEN 0 WHEN 'sent' THEN 1 WHEN 'sending' THEN 2
                  WHEN 'failed' THEN 3 ELSE 4 END,
       failure, attempts, next_attempt_ms, last_reply, sent_at, bounce_held, relay
FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;

-- What the foreign key's cascade did: a reader who is deleted (erasure, a merge of two
-- rows for one mailbox, an expired signup) takes their deliveries along.
CREATE TRIGGER deliveries_of_deleted_reader AFTER DELETE ON subscribers
BEGIN
    DELETE FROM deliveries
    WHERE issue IN (SELECT number FROM issues) AND subscriber_id = OLD.id;
END;

-- The totals triggers of migration 10, for integer states.
CREATE TRIGGER issue_totals_delivery_added AFTER INSERT ON deliveries
BEGIN
    UPDATE issue_totals SET
        pending = pending + (NEW.state = 0),
        untried = untried + (NEW.state = 0 AND NEW.attempts = 0),
        sending = sending + (NEW.state = 2),
        sent = sent + (NEW.state = 1),
        failed_permanent = failed_permanent
            + (NEW.state = 3 AND NEW.failure IS NOT 'temporary'),
        failed_temporary = failed_temporary
            + (NEW.state = 3 AND NEW.failure IS 'temporary'),
        skipped = skipped + (NEW.state = 4)
    WHERE issue = NEW.issue;
END;

CREATE TRIGGER issue_totals_delivery_changed AFTER UPDATE OF state, failure, attempts ON deliveries
WHEN OLD.state IS NOT NEW.state OR OLD.failure IS NOT NEW.failure
  OR (OLD.attempts = 0) IS NOT (NEW.attempts = 0)
BEGIN
    UPDATE issue_totals SET
        pending = pending + (NEW.state = 0) - (OLD.state = 0),
        untried = untried + (NEW.state = 0 AND NEW.attempts = 0)
                          - (OLD.state = 0 AND OLD.attempts = 0),
        sending = sending + (NEW.state = 2) - (OLD.state = 2),
        sent = sent + (NEW.state = 1) - (OLD.state = 1),
        failed_permanent = failed_permanent
            + (NEW.state = 3 AND NEW.failure IS NOT 'temporary')
            - (OLD.state = 3 AND OLD.failure IS NOT 'temporary'),
        failed_temporary = failed_temporary
            + (NEW.state = 3 AND NEW.failure IS 'temporary')
            - (OLD.state = 3 AND OLD.failure IS 'temporary'),
        skipped = skipped + (NEW.state = 4) - (OLD.state = 4)
    WHERE issue = NEW.issue;
END;

-- A finished delivery that is deleted (compaction, an erased reader) stays counted: the
-- mail went out. One that was still to be sent will never be, so it counts as skipped.
CREATE TRIGGER issue_totals_delivery_dropped AFTER DELETE ON deliveries
WHEN OLD.state IN (0, 2)
BEGIN
    UPDATE issue_totals SET
        pending = pending - (OLD.state = 0),
        untried = untried - (OLD.state = 0 AND OLD.attempts = 0),
        sending = sending - (OLD.state = 2),
        skipped = skipped + 1
    WHERE issue = OLD.issue;
END;
