-- 17: each relay's share of an issue, folded when compaction deletes the issue's delivery
-- rows, so `issues show N` keeps its `Relays:` line for the issue's whole life.
CREATE TABLE issue_relay_totals (
    issue INTEGER NOT NULL REFERENCES issues (number) ON DELETE CASCADE,
    relay_id INTEGER NOT NULL REFERENCES relays (id),
    sent INTEGER NOT NULL,
    not_sent INTEGER NOT NULL,
    PRIMARY KEY (issue, relay_id)
) WITHOUT ROWID;
