-- 5: a refusal that says the mailbox does not exist is held on its delivery until the run
-- ends, and only then marks the reader bounced, so a relay refusing everyone (which pauses
-- the issue instead) never empties the list. 1 = held, 0 = nothing held.
ALTER TABLE deliveries ADD COLUMN bounce_held INTEGER NOT NULL DEFAULT 0;
