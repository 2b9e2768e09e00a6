-- 6: only signed evidence changes a reader.
--
-- Inbound reports (bounces, complaints, mailto unsubscribes) that carry no signed tag or
-- signed Message-ID are kept here, never applied: what they claim (a delivery named by an
-- unsigned or legacy Message-ID, the addresses they name) is shown to the operator by
-- `verdicts inbound --unattributed` and counted by `issues show`. The claims are unproven,
-- so they reference nothing: no foreign keys. `counted_issue` is the issue the report is
-- counted under: the one its Message-ID claims when that issue exists, else the newest
-- issue when it arrived.
CREATE TABLE inbound_unattributed (
    id INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('hard', 'soft', 'complaint', 'unsubscribe')),
    reason TEXT NOT NULL,
    claimed_issue INTEGER,
    claimed_subscriber INTEGER,
    message_id_trust TEXT CHECK (message_id_trust IN ('legacy', 'forged')),
    -- The addresses the report names, comma-separated.
    claimed_addresses TEXT,
    counted_issue INTEGER,
    -- The report's own Message-ID, the status code and the server's words, as given.
    report_message_id TEXT,
    status TEXT,
    diagnostic TEXT
);
CREATE INDEX inbound_unattributed_by_issue ON inbound_unattributed (counted_issue);

-- A confirmation link is used once (`confirmed_at`), and one that was not used before its
-- reader left (unsubscribed or bounced) is withdrawn then: a link mailed before an
-- unsubscribe can never undo it. A signup made after leaving gets a new confirmation.
-- The trigger covers every way a status changes (web, inbound, CLI, import, the send
-- itself). A later migration that rebuilds `subscribers` must create it again.
ALTER TABLE confirmations ADD COLUMN revoked_at TEXT;
CREATE TRIGGER confirmations_revoked_when_reader_leaves
AFTER UPDATE OF status ON subscribers
WHEN NEW.status IN ('unsubscribed', 'bounced') AND OLD.status <> NEW.status
BEGIN
    UPDATE confirmations SET revoked_at = NEW.updated_at
    WHERE subscriber_id = NEW.id AND confirmed_at IS NULL AND revoked_at IS NULL;
END;
