-- Facts about the installation that outlive any one process, one row each. The first is
-- `secret_fingerprint`: a one-way fingerprint of the key that signs readers' links, so a
-- changed VERDICTS_SECRET is noticed before it voids every link already mailed.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
