-- 0008: writing atoms and objects with deduplication across roles (docs/SECURITY.md).
--
-- Bulk loading: hart_stage() creates the session's temporary staging table; the backend fills
-- it (binary COPY) and calls hart_merge_stage() in the same transaction, which in one pass
--   * inserts the atoms nobody has (held by the caller),
--   * for atoms that exist, checks that the staged copy is identical (content hash, value,
--     modality and geometry byte for byte) and then makes the caller a holder: proof of
--     possession, since the caller had the bytes (leaf) or every child's position (composite);
--     different content at the same key is a collision, reported and never merged,
--   * adds one reference to each distinct child of each composite it inserted, after checking
--     that every child exists and is readable by the caller.
-- Objects: hart_register_object() (the root must be readable by the caller; adds the object's
-- reference on its root) and hart_delete_object() (releases it).
--
-- These run as hart_owner (SECURITY DEFINER, BYPASSRLS): holders and ref_count are not
-- writable any other way. The caller is the session's role (SET ROLE) or its login role,
-- never a function argument, so it cannot be forged.
SET LOCAL ROLE hart_owner;

-- The role a SECURITY DEFINER function acts for: the role set with SET ROLE, else the login
-- role. (current_user inside such a function is its owner.) SET ROLE can only name roles the
-- session is a member of, so this cannot be forged.
CREATE FUNCTION hart_invoker() RETURNS name LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(nullif(current_setting('role'), 'none'), session_user)::name
$$;

-- Raised for two different atoms on one key (SQLSTATE HT001): DESIGN.md section 3.
-- Raised for a composite whose child is missing or unreadable (SQLSTATE HT002).

-- The session's staging table, created by hart_owner (so that its shape, rules and triggers
-- are ours, not the caller's) with INSERT granted to the caller, who fills it with COPY.
-- Rows live until the end of the transaction.
CREATE FUNCTION hart_stage() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    who name := hart_invoker();
BEGIN
    IF to_regclass('pg_temp.hart_stage') IS NULL THEN
        CREATE TEMP TABLE hart_stage (
            h_xy         bigint   NOT NULL,
            h_yz         bigint   NOT NULL,
            h_zm         bigint   NOT NULL,
            geom         geometry NOT NULL,
            value        bytea,
            modality     smallint NOT NULL,
            content_hash bytea    NOT NULL,
            meta         jsonb,
            is_public    boolean  NOT NULL DEFAULT false
        ) ON COMMIT DELETE ROWS;
    ELSE
        PERFORM hart_check_stage();
    END IF;
    EXECUTE format('GRANT INSERT, SELECT ON pg_temp.hart_stage TO %I', who);
END
$$;

-- Refuse a pg_temp.hart_stage that hart_stage() did not create: a table the caller made (or
-- turned into a view) could feed the merge rows the caller never had.
CREATE FUNCTION hart_check_stage() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    IF to_regclass('pg_temp.hart_stage') IS NULL THEN
        RAISE EXCEPTION 'no staging table in this session'
            USING ERRCODE = 'undefined_table', HINT = 'call hart_stage() and fill hart_stage first';
    END IF;
    PERFORM FROM pg_class c
    WHERE c.oid = 'pg_temp.hart_stage'::regclass AND c.relkind = 'r'
      AND c.relowner = 'hart_owner'::regrole;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pg_temp.hart_stage was not created by hart_stage()'
            USING ERRCODE = 'insufficient_privilege', HINT = 'DROP TABLE pg_temp.hart_stage, then call hart_stage()';
    END IF;
END
$$;

-- Planning: every probe of atoms is a correlated LATERAL ... LIMIT 1 (an index lookup pruned
-- to one partition, whatever the statistics: fresh partitions have none), and the UPDATEs run
-- with hash and merge joins off for the same reason. No JIT: plans over 256 partitions look
-- expensive enough to compile, which costs more than running them. Generic plans: a custom
-- plan over 256 partitions costs 20-50 ms to make, per statement and call.
--
-- References: new atoms are inserted with their reference count already set (the number of
-- new composites of this batch that have them as a child), so that the common case, children
-- arriving with their parents, updates no row. Only children that existed before get an
-- UPDATE. If a concurrent merge stores one of our new atoms first, the counts computed here
-- would be wrong: the batch fails with serialization_failure (40001) and is retried.
CREATE FUNCTION hart_merge_stage(OUT created bigint, OUT existing bigint, OUT claimed bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
SET jit = off SET work_mem = '128MB' SET plan_cache_mode = force_generic_plan
SET enable_hashjoin = on SET enable_mergejoin = on AS $$
DECLARE
    who     name := hart_invoker();
    staged  bigint;
    n_fresh bigint;
    n_bad   bigint;
    n_kids  bigint;
    n_upd   bigint;
    -- References to children that were not inserted by this call (they existed before).
    k_xy    bigint[];
    k_pt    geometry[];
    k_n     bigint[];
BEGIN
    IF NOT pg_has_role(who, 'hart_writer', 'USAGE') THEN
        RAISE EXCEPTION 'role % may not write atoms', who
            USING ERRCODE = 'insufficient_privilege', HINT = 'GRANT hart_writer TO the role';
    END IF;
    PERFORM hart_check_stage();

    -- One staged row per key; two different staged atoms on one key collide.
    SELECT count(*) INTO n_bad FROM (
        SELECT 1 FROM pg_temp.hart_stage
        GROUP BY h_xy, h_yz, h_zm
        HAVING count(DISTINCT (content_hash, value, modality, ST_AsEWKB(geom))) > 1) d;
    IF n_bad > 0 THEN
        RAISE EXCEPTION 'position collision: % key(s) carry two different atoms in one batch', n_bad
            USING ERRCODE = 'HT001';
    END IF;

    WITH s AS (
        SELECT DISTINCT ON (h_xy, h_yz, h_zm) * FROM pg_temp.hart_stage
        ORDER BY h_xy, h_yz, h_zm
    ), probe AS (
        SELECT s.*, e.hit IS NOT NULL AS present
        FROM s LEFT JOIN LATERAL (
            SELECT true AS hit FROM atoms a
            WHERE a.h_xy = s.h_xy AND a.h_yz = s.h_yz AND a.h_zm = s.h_zm
            LIMIT 1) e ON true
    ), fresh AS (
        SELECT * FROM probe WHERE NOT present
    ), kids AS (
        -- Distinct children of each new composite (a child repeated in one parent counts once).
        SELECT f.h_xy AS p_xy, f.h_yz AS p_yz, f.h_zm AS p_zm, f.modality, v.geom AS pt
        FROM fresh f
        CROSS JOIN LATERAL ST_DumpPoints(ST_GeometryN(f.geom, 2)) AS v
        WHERE f.value IS NULL
        GROUP BY 1, 2, 3, 4, 5
    ), counts AS (
        -- Children are identified by (h_xy, point): the point is the atom's, and h_xy, computed
        -- once per distinct child (not per vertex), finds its partition and index entry.
        SELECT hart_xy_of_point(modality, pt) AS h_xy, pt, count(*) AS n
        FROM kids GROUP BY modality, pt
    ), ins AS (
        INSERT INTO atoms AS a (h_xy, h_yz, h_zm, geom, value, modality, content_hash, meta,
                                is_public, owners, created_by, updated_by, ref_count)
        SELECT f.h_xy, f.h_yz, f.h_zm, f.geom, f.value, f.modality, f.content_hash, f.meta,
               f.is_public, ARRAY[who], who, who, coalesce(c.n, 0)
        FROM fresh f
        LEFT JOIN counts c ON c.h_xy = f.h_xy AND c.pt = ST_GeometryN(f.geom, 1)
        ORDER BY f.h_xy, f.h_yz, f.h_zm          -- a stable lock order between merges
        ON CONFLICT (h_xy, h_yz, h_zm) DO NOTHING
        RETURNING a.h_xy, a.pt
    )
    SELECT (SELECT count(*) FROM probe), (SELECT count(*) FROM fresh), (SELECT count(*) FROM ins),
           array_agg(c.h_xy), array_agg(c.pt), array_agg(c.n)
    INTO staged, n_fresh, created, k_xy, k_pt, k_n
    FROM counts c
    WHERE NOT EXISTS (SELECT FROM ins i WHERE i.h_xy = c.h_xy AND i.pt = c.pt);

    IF created <> n_fresh THEN
        RAISE EXCEPTION 'a concurrent merge stored % of these atoms first', n_fresh - created
            USING ERRCODE = 'serialization_failure', HINT = 'retry the batch';
    END IF;
    existing := staged - created;

    -- Atoms that were already there: identical, or a collision.
    SELECT count(*) INTO n_bad
    FROM (SELECT DISTINCT ON (h_xy, h_yz, h_zm) * FROM pg_temp.hart_stage
          ORDER BY h_xy, h_yz, h_zm) s
    CROSS JOIN LATERAL (
        SELECT a.content_hash, a.modality, a.value, a.geom FROM atoms a
        WHERE a.h_xy = s.h_xy AND a.h_yz = s.h_yz AND a.h_zm = s.h_zm
        LIMIT 1) a
    WHERE NOT (a.content_hash = s.content_hash AND a.modality = s.modality
               AND a.value IS NOT DISTINCT FROM s.value
               AND ST_AsEWKB(a.geom) = ST_AsEWKB(s.geom));
    IF n_bad > 0 THEN
        -- Nothing about the stored atom is revealed: the caller only learns its key is taken.
        RAISE EXCEPTION 'position collision: % staged atom(s) differ from the atoms stored on their keys', n_bad
            USING ERRCODE = 'HT001',
                  HINT = 'two different contents map to one position; report it with the content hashes';
    END IF;

    -- The UPDATEs below join a small set to atoms: index probes, never a scan of atoms.
    PERFORM set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true);

    -- Proof of possession: the caller becomes a holder of each private atom it could write
    -- identically. Public atoms need no holders (publishing cannot be undone, trigger
    -- atoms_publish_is_final). Publishing is a right of every holder: each could publish the
    -- bytes anyway.
    IF existing > 0 THEN
        WITH s AS (SELECT DISTINCT ON (h_xy, h_yz, h_zm) h_xy, h_yz, h_zm, is_public
                   FROM pg_temp.hart_stage ORDER BY h_xy, h_yz, h_zm),
             upd AS (
            UPDATE atoms a
            SET owners    = CASE WHEN s.is_public THEN a.owners ELSE a.owners || who END,
                is_public = s.is_public
            FROM s
            WHERE a.h_xy = s.h_xy AND a.h_yz = s.h_yz AND a.h_zm = s.h_zm
              AND NOT a.is_public AND (s.is_public OR NOT who = ANY (a.owners))
            RETURNING 1)
        SELECT count(*) INTO claimed FROM upd;
    ELSE
        claimed := 0;
    END IF;

    -- One reference from each new composite to each distinct child that existed before. Every
    -- child must exist and be readable by the caller: no references to what it cannot see.
    IF k_xy IS NOT NULL THEN
        WITH c AS (SELECT * FROM unnest(k_xy, k_pt, k_n) AS c(h_xy, pt, n) ORDER BY 1),
             upd AS (
            UPDATE atoms a SET ref_count = a.ref_count + c.n
            FROM c
            WHERE a.h_xy = c.h_xy AND a.pt = c.pt
              AND (a.is_public OR who = ANY (a.owners))
            RETURNING 1)
        SELECT cardinality(k_xy), (SELECT count(*) FROM upd) INTO n_kids, n_upd;
        IF n_upd <> n_kids THEN
            RAISE EXCEPTION '% child atom(s) of the new composites are missing or not readable by %',
                n_kids - n_upd, who
                USING ERRCODE = 'HT002',
                      HINT = 'put children before their parents, in this batch or an earlier one';
        END IF;
    END IF;
END
$$;

COMMENT ON FUNCTION hart_merge_stage() IS
    'Merge pg_temp.hart_stage into atoms: insert new, claim identical, refuse collisions, count child references.';

-- Register an ingested object over a root the caller can read; the object holds one
-- reference on its root. Returns the object id.
CREATE FUNCTION hart_register_object(ingestion_id bigint, object_name text, root_h_xy bigint,
                                     root_h_yz bigint, root_h_zm bigint, bytes bigint,
                                     meta jsonb DEFAULT NULL, is_public boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    who  name := hart_invoker();
    root atoms;
    id   bigint;
BEGIN
    IF NOT pg_has_role(who, 'hart_writer', 'USAGE') THEN
        RAISE EXCEPTION 'role % may not register objects', who USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM FROM ingestion_log l WHERE l.id = hart_register_object.ingestion_id AND l.created_by = who;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no ingestion % of role %', ingestion_id, who USING ERRCODE = 'no_data_found';
    END IF;
    SELECT * INTO root FROM atoms a
    WHERE a.h_xy = root_h_xy AND a.h_yz = root_h_yz AND a.h_zm = root_h_zm
      AND (a.is_public OR who = ANY (a.owners))
    FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no atom (%, %, %), or it is not readable by %', root_h_xy, root_h_yz, root_h_zm, who
            USING ERRCODE = 'HT002';
    END IF;
    INSERT INTO objects (ingestion_id, name, root_h_xy, root_h_yz, root_h_zm, root_hash,
                         modality, bytes, meta, owner, is_public)
    VALUES (ingestion_id, object_name, root.h_xy, root.h_yz, root.h_zm, root.content_hash,
            root.modality, bytes, meta, who, is_public)
    RETURNING objects.id INTO id;
    UPDATE atoms a SET ref_count = a.ref_count + 1
    WHERE a.h_xy = root.h_xy AND a.h_yz = root.h_yz AND a.h_zm = root.h_zm;
    RETURN id;
END
$$;

-- Delete one of the caller's objects: mark it deleted and release its root.
CREATE FUNCTION hart_delete_object(object_id bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    who name := hart_invoker();
    o   objects;
BEGIN
    SELECT * INTO o FROM objects
    WHERE id = object_id AND deleted_at IS NULL
      AND (owner = who OR pg_has_role(who, 'hart_admin', 'MEMBER'))
    FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no live object % of role %', object_id, who USING ERRCODE = 'no_data_found';
    END IF;
    UPDATE objects SET deleted_at = now() WHERE id = object_id;
    UPDATE atoms a SET ref_count = a.ref_count - 1
    WHERE a.h_xy = o.root_h_xy AND a.h_yz = o.root_h_yz AND a.h_zm = o.root_h_zm;
END
$$;

REVOKE ALL ON FUNCTION hart_stage(), hart_check_stage() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hart_stage(), hart_check_stage() TO hart_writer;
REVOKE ALL ON FUNCTION hart_merge_stage(), hart_register_object(bigint, text, bigint, bigint, bigint, bigint, jsonb, boolean),
    hart_delete_object(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hart_merge_stage(), hart_register_object(bigint, text, bigint, bigint, bigint, bigint, jsonb, boolean),
    hart_delete_object(bigint) TO hart_writer;
