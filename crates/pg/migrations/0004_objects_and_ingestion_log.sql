-- 0004: the ingestion log and the object catalogue.
--
-- ingestion_log is the seed's table: one row per ingestion attempt, its counters and its
-- status lifecycle pending -> running -> completed | failed. It is history: a row is never
-- deleted when its object is, and its root is not a foreign key (the root may be collected).
--
-- objects is the live catalogue: what a user ingested, under which name, with which root.
-- Names and paths belong here, never to atoms (atoms are shared between objects and users).
-- Deleting an object marks it deleted and releases its reference on the root; the row
-- stays for provenance until purged.
SET LOCAL ROLE hart_owner;

CREATE TABLE ingestion_log (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_uri       text        NOT NULL,
    source_hash      bytea       CHECK (octet_length(source_hash) = 32),  -- BLAKE3 of the input bytes
    modality         smallint    CHECK (modality BETWEEN 0 AND 127),
    root_h_xy        bigint,
    root_h_yz        bigint,
    root_h_zm        bigint,
    root_hash        bytea       CHECK (octet_length(root_hash) = 32),
    atoms_created    bigint      NOT NULL DEFAULT 0 CHECK (atoms_created >= 0),
    atoms_referenced bigint      NOT NULL DEFAULT 0 CHECK (atoms_referenced >= 0),
    atoms_skipped    bigint      NOT NULL DEFAULT 0 CHECK (atoms_skipped >= 0),
    bytes            bigint      NOT NULL DEFAULT 0 CHECK (bytes >= 0),
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    error            text,
    started_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    created_by       name        NOT NULL DEFAULT current_user,
    -- The root is all three key parts or none of them.
    CONSTRAINT ingestion_log_root_key CHECK (
        (root_h_xy IS NULL) = (root_h_yz IS NULL) AND (root_h_yz IS NULL) = (root_h_zm IS NULL)),
    CONSTRAINT ingestion_log_completed_has_root CHECK (
        status <> 'completed' OR (root_h_xy IS NOT NULL AND root_hash IS NOT NULL AND completed_at IS NOT NULL)),
    CONSTRAINT ingestion_log_failed_has_error CHECK (
        status <> 'failed' OR (error IS NOT NULL AND completed_at IS NOT NULL)),
    CONSTRAINT ingestion_log_time_order CHECK (completed_at IS NULL OR completed_at >= started_at)
);
COMMENT ON TABLE ingestion_log IS 'One row per ingestion attempt (DESIGN.md section 6); history, never rewritten after completion.';

CREATE INDEX ingestion_log_status ON ingestion_log (status) WHERE status IN ('pending', 'running');
CREATE INDEX ingestion_log_started_at ON ingestion_log (started_at DESC);
CREATE INDEX ingestion_log_created_by ON ingestion_log (created_by, started_at DESC);
CREATE INDEX ingestion_log_source_hash ON ingestion_log (source_hash);
CREATE INDEX ingestion_log_root_hash ON ingestion_log (root_hash);

-- Status moves forward only: pending -> running -> completed | failed (or pending -> failed).
CREATE FUNCTION ingestion_log_status_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> NEW.status AND NOT (
           (OLD.status = 'pending' AND NEW.status IN ('running', 'failed'))
        OR (OLD.status = 'running' AND NEW.status IN ('completed', 'failed'))) THEN
        RAISE EXCEPTION 'ingestion % cannot go from % to %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.status IN ('completed', 'failed') THEN
        RAISE EXCEPTION 'ingestion % is % and can no longer change', OLD.id, OLD.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER ingestion_log_status_forward BEFORE UPDATE ON ingestion_log
    FOR EACH ROW EXECUTE FUNCTION ingestion_log_status_forward();

CREATE TABLE objects (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ingestion_id bigint      NOT NULL UNIQUE REFERENCES ingestion_log (id),
    name         text        NOT NULL,     -- the path or name the user gave
    root_h_xy    bigint      NOT NULL,
    root_h_yz    bigint      NOT NULL,
    root_h_zm    bigint      NOT NULL,
    root_hash    bytea       NOT NULL CHECK (octet_length(root_hash) = 32),
    modality     smallint    NOT NULL CHECK (modality BETWEEN 0 AND 127),
    bytes        bigint      NOT NULL CHECK (bytes >= 0),
    meta         jsonb       CHECK (meta IS NULL OR jsonb_typeof(meta) = 'object'),
    owner        name        NOT NULL DEFAULT current_user,
    is_public    boolean     NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz
    -- No foreign key to atoms: a live object holds a reference (ref_count) on its root, which
    -- keeps the root from being collected; a deleted object's root may be collected while
    -- the row stays for provenance.
);
COMMENT ON TABLE objects IS 'Ingested objects: names and roots (DESIGN.md section 6). Names never go on atoms.';

CREATE INDEX objects_root ON objects (root_h_xy, root_h_yz, root_h_zm);
CREATE INDEX objects_root_hash ON objects (root_hash);
CREATE INDEX objects_owner ON objects (owner, created_at DESC) WHERE deleted_at IS NULL;
CREATE INDEX objects_name ON objects (name);
