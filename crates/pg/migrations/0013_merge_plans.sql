-- 0013: the merge's reference updates no longer depend on the partitions' statistics.
--
-- hart_merge_references finds each existing child by (h_xy, own point), a prefix of the
-- primary key. While a bulk load fills a partition, its statistics lag (autovacuum analyzes
-- it now and then); without them PostgreSQL assumes 0.5 % of the rows share an h_xy, costs a
-- probe at hundreds of rows, and joins a few dozen children to the partition by a sequential
-- scan and a hash join: 20-200 ms per call instead of well under one, measured at 10-50 s of
-- the server's time per 100 MiB loaded. h_xy is unique in practice (it holds 56 bits of an
-- atom's position), so the index is always right here: the plan is pinned to it.
SET LOCAL ROLE hart_owner;

ALTER FUNCTION hart_merge_references(text, name, timestamptz, bigint[], geometry[], bigint[])
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off;
