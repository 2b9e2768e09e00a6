-- 16: the failed deliveries of an issue, found without reading the issue's every row.
-- `issues show N` lists them and `issues retry N` re-queues them; at a million readers a
-- scan of the issue's rows for the few in state 3 took 0.2 s. The index holds only failed
-- rows (one in a few hundred), so it costs a sent row nothing.
CREATE INDEX deliveries_failed ON deliveries (issue) WHERE state = 3;
