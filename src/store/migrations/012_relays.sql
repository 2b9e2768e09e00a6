-- 12: the relays an issue goes out through (smtp: may list several), which relay took each
-- delivery, and how many messages each relay was handed per second, so per-second, hourly
-- and daily limits hold across restarts and resumed issues (see store/relays.rs).
CREATE TABLE relays (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    -- When the relay was first handed a message (ms since the epoch): the warm-up ramp's day 1.
    first_used_ms INTEGER
);
CREATE TABLE relay_usage (
    relay INTEGER NOT NULL REFERENCES relays (id),
    second INTEGER NOT NULL,
    handed INTEGER NOT NULL,
    PRIMARY KEY (relay, second)
) WITHOUT ROWID;
-- The relay a delivery was last handed to (relays.id); NULL before this migration.
ALTER TABLE deliveries ADD COLUMN relay INTEGER;
