-- 0009: removal of any ingestion, for the storage interface's `delete_object`.
--
-- ingestion_log rows are history and never change after completion, and objects rows exist
-- only for completed ingestions that hold a reference on their root. The storage interface
-- also removes ingestions that never got an object (failed, or unchanged: a completed
-- re-ingestion of a live object with the same URI and root, which adds no reference). A
-- removal is recorded here; for an object, hart_delete_object() releases its root as well.
SET LOCAL ROLE hart_owner;

CREATE TABLE ingestion_removed (
    ingestion_id bigint      PRIMARY KEY REFERENCES ingestion_log (id),
    removed_at   timestamptz NOT NULL DEFAULT now(),
    removed_by   name        NOT NULL DEFAULT current_user
);
COMMENT ON TABLE ingestion_removed IS
    'Ingestions removed by their role (delete_object); history rows stay in ingestion_log.';

ALTER TABLE ingestion_removed ENABLE ROW LEVEL SECURITY;
ALTER TABLE ingestion_removed FORCE ROW LEVEL SECURITY;
CREATE POLICY ingestion_removed_read ON ingestion_removed FOR SELECT TO hart_reader USING (true);
CREATE POLICY ingestion_removed_insert ON ingestion_removed FOR INSERT TO hart_writer
    WITH CHECK (removed_by = current_user AND EXISTS (
        SELECT FROM ingestion_log l WHERE l.id = ingestion_id AND l.created_by = current_user));
GRANT SELECT ON ingestion_removed TO hart_reader;
GRANT INSERT (ingestion_id) ON ingestion_removed TO hart_writer;
