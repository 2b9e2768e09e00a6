-- 14: readers' community votes and the digest's click counts (see store/tracking.rs).
-- One vote per reader per tool, changeable: the key is (subscriber, comparison, tool).
-- A vote outlives an unsubscribe; erasing the reader (`subscribers remove`) deletes it.
CREATE TABLE votes (
    subscriber_id INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    slug TEXT NOT NULL,
    tool INTEGER NOT NULL CHECK (tool IN (0, 1)),
    choice TEXT NOT NULL CHECK (choice IN ('ship', 'skip')),
    issue INTEGER NOT NULL,
    cast_at TEXT NOT NULL,
    changed_at TEXT,
    PRIMARY KEY (subscriber_id, slug, tool)
) WITHOUT ROWID;
CREATE INDEX votes_by_comparison ON votes (slug, tool);
-- Every followed tracked link. `visitor` is a keyed hash of the client's address and user
-- agent (never the address itself); `subscriber_id` is set only with tracking.clicks:
-- per-reader. `machine` is NULL for a person, else why it was judged a machine: head,
-- prefetch, agent, network, early, decoy.
CREATE TABLE clicks (
    id INTEGER PRIMARY KEY,
    issue INTEGER NOT NULL,
    position INTEGER NOT NULL,
    target TEXT NOT NULL,
    slug TEXT,
    visitor TEXT NOT NULL,
    subscriber_id INTEGER REFERENCES subscribers (id) ON DELETE CASCADE,
    at TEXT NOT NULL,
    machine TEXT CHECK (machine IN ('head', 'prefetch', 'agent', 'network', 'early', 'decoy', 'open'))
);
CREATE INDEX clicks_by_issue ON clicks (issue, visitor);
CREATE INDEX clicks_by_subscriber ON clicks (subscriber_id) WHERE subscriber_id IS NOT NULL;
