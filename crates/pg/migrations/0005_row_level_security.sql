-- 0005: row-level security and privileges (docs/SECURITY.md).
--
-- Principals are LOGIN roles granted hart_reader or hart_writer. Policies compare
-- current_user, so a service acting for a user does SET ROLE to that user's role.
--
-- atoms: readable when public or when the reader is one of its holders (`owners`); a writer
-- inserts atoms held by itself only; it may change meta/is_public of atoms it holds; it may
-- delete an atom only when it is the sole holder and nothing references it. Content columns,
-- holders and ref_count are never writable directly: they change only through the SECURITY
-- DEFINER functions of migration 0008, which check proof of possession.
--
-- FORCE makes the policies bind the table owner too; hart_owner has BYPASSRLS on purpose
-- (it runs the checked SECURITY DEFINER functions), so FORCE guards against the tables ever
-- being owned by another role. Partitions get no privileges at all: they can only be reached
-- through `atoms`, where the policies are.
SET LOCAL ROLE hart_owner;

ALTER TABLE atoms ENABLE ROW LEVEL SECURITY;
ALTER TABLE atoms FORCE ROW LEVEL SECURITY;

CREATE POLICY atoms_read ON atoms FOR SELECT TO hart_reader
    USING (is_public OR current_user = ANY (owners));
CREATE POLICY atoms_insert ON atoms FOR INSERT TO hart_writer
    WITH CHECK (owners = ARRAY[current_user]::name[]
                AND created_by = current_user AND updated_by = current_user
                AND ref_count = 0 AND version = 1);
CREATE POLICY atoms_update ON atoms FOR UPDATE TO hart_writer
    USING (current_user = ANY (owners))
    WITH CHECK (current_user = ANY (owners));
CREATE POLICY atoms_delete ON atoms FOR DELETE TO hart_writer
    USING (owners = ARRAY[current_user]::name[] AND ref_count = 0);

GRANT SELECT ON atoms, atom_partition_plan TO hart_reader;
GRANT INSERT (h_xy, h_yz, h_zm, geom, value, modality, content_hash, meta, is_public)
    ON atoms TO hart_writer;
GRANT UPDATE (meta, is_public) ON atoms TO hart_writer;
GRANT DELETE ON atoms TO hart_writer;

ALTER TABLE ingestion_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE ingestion_log FORCE ROW LEVEL SECURITY;

CREATE POLICY ingestion_log_read ON ingestion_log FOR SELECT TO hart_reader
    USING (created_by = current_user);
CREATE POLICY ingestion_log_insert ON ingestion_log FOR INSERT TO hart_writer
    WITH CHECK (created_by = current_user);
CREATE POLICY ingestion_log_update ON ingestion_log FOR UPDATE TO hart_writer
    USING (created_by = current_user)
    WITH CHECK (created_by = current_user);

GRANT SELECT ON ingestion_log TO hart_reader;
GRANT INSERT (source_uri, source_hash, modality, bytes, status) ON ingestion_log TO hart_writer;
GRANT UPDATE (modality, root_h_xy, root_h_yz, root_h_zm, root_hash, atoms_created,
              atoms_referenced, atoms_skipped, bytes, status, error, completed_at)
    ON ingestion_log TO hart_writer;

ALTER TABLE objects ENABLE ROW LEVEL SECURITY;
ALTER TABLE objects FORCE ROW LEVEL SECURITY;

CREATE POLICY objects_read ON objects FOR SELECT TO hart_reader
    USING (is_public OR owner = current_user);
-- An object may only be registered over a root its owner can read (the subquery runs under
-- the inserting role's own atoms policies).
CREATE POLICY objects_insert ON objects FOR INSERT TO hart_writer
    WITH CHECK (owner = current_user
                AND EXISTS (SELECT FROM atoms a
                            WHERE a.h_xy = root_h_xy AND a.h_yz = root_h_yz AND a.h_zm = root_h_zm
                              AND a.content_hash = root_hash));
CREATE POLICY objects_update ON objects FOR UPDATE TO hart_writer
    USING (owner = current_user)
    WITH CHECK (owner = current_user);

GRANT SELECT ON objects TO hart_reader;
GRANT INSERT (ingestion_id, name, root_h_xy, root_h_yz, root_h_zm, root_hash, modality, bytes,
              meta, is_public)
    ON objects TO hart_writer;
GRANT UPDATE (name, meta, is_public) ON objects TO hart_writer;
