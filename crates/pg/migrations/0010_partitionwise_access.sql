-- 0010: bulk loading and keyed reads at scale (docs/decisions/0011-pg-bulk-path.md).
--
-- Measured on PostgreSQL 15: a parameterized nested loop into `atoms` (256 partitions) costs
-- ~100 us per outer row, because run-time pruning re-initialises the Append on every rescan;
-- the same probe into the one partition that holds the key costs ~0.5 us. So every statement
-- that looks up many keys now groups them by partition (width_bucket over the plan's lower
-- bounds) and runs once per touched partition, on the partition itself. Partitions have no
-- grants (0005): only these SECURITY DEFINER functions reach them, and they apply the read
-- policy of `atoms` themselves.
--
-- Also:
--   * the staging table gains `kids` (the h_xy of each child, one per vertex of the
--     composite's LINESTRING, from the writer), so the merge no longer derives keys from
--     points in PL/pgSQL (~3 us per child). A wrong h_xy cannot do harm: a child is found by
--     (h_xy, point), and every stored atom's key is checked against its point on insert, so
--     a wrong h_xy finds nothing and the merge fails (HT002). kids NULL: derived as before.
--   * the per-row validation trigger (~12 us per inserted atom) becomes one statement-level
--     trigger over the inserted rows (same checks, same constraint names in the errors);
--   * hart_merge_stage() no longer probes atoms before inserting: it inserts with
--     ON CONFLICT DO NOTHING (tuple routing finds the partition) and works out from what was
--     inserted which atoms existed, and it reports `referenced` (references added to atoms
--     that existed before `since`, the start of the caller's ingestion).
SET LOCAL ROLE hart_owner;

-- The partitions' lower bounds, ascending, and their names: the partition of h_xy is
-- names[width_bucket(h_xy, lo)].
CREATE FUNCTION hart_partition_bounds(OUT lo bigint[], OUT names text[])
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT array_agg(p.lo ORDER BY p.lo), array_agg(p.partition_name ORDER BY p.lo) FROM atom_partition_plan p
$$;
GRANT EXECUTE ON FUNCTION hart_partition_bounds() TO hart_reader;

-- Atoms at the given keys that the caller can read (the policy atoms_read), one row per key
-- found: i is the key's 1-based position in the arrays. Key order is not kept.
CREATE FUNCTION hart_atoms_at(xs bigint[], ys bigint[], zs bigint[])
RETURNS TABLE (i bigint, value bytea, geom bytea, content_hash bytea, modality smallint, ref_count bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp SET jit = off AS $$
DECLARE
    who   name := hart_invoker();
    lo    bigint[];
    names text[];
    b     int;
    gx    bigint[];
    gy    bigint[];
    gz    bigint[];
    gi    bigint[];
BEGIN
    IF NOT pg_has_role(who, 'hart_reader', 'USAGE') THEN
        RAISE EXCEPTION 'role % may not read atoms', who
            USING ERRCODE = 'insufficient_privilege', HINT = 'GRANT hart_reader TO the role';
    END IF;
    IF cardinality(xs) IS DISTINCT FROM cardinality(ys) OR cardinality(xs) IS DISTINCT FROM cardinality(zs) THEN
        RAISE EXCEPTION 'hart_atoms_at: key arrays of different lengths' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT p.lo, p.names INTO lo, names FROM hart_partition_bounds() p;
    FOR b, gx, gy, gz, gi IN
        SELECT width_bucket(u.x, lo), array_agg(u.x), array_agg(u.y), array_agg(u.z), array_agg(u.n)
        FROM unnest(xs, ys, zs) WITH ORDINALITY AS u(x, y, z, n)
        WHERE u.x >= 0
        GROUP BY 1
    LOOP
        RETURN QUERY EXECUTE format(
            'SELECT u.n, a.value, ST_AsEWKB(a.geom), a.content_hash, a.modality, a.ref_count
             FROM unnest($1, $2, $3, $4) AS u(x, y, z, n)
             JOIN %I a ON a.h_xy = u.x AND a.h_yz = u.y AND a.h_zm = u.z
             WHERE a.is_public OR $5 = ANY (a.owners)', names[b])
            USING gx, gy, gz, gi, who;
    END LOOP;
END
$$;
COMMENT ON FUNCTION hart_atoms_at(bigint[], bigint[], bigint[]) IS
    'Atoms at many keys at once, one statement per partition; rows the caller may read (policy atoms_read).';
REVOKE ALL ON FUNCTION hart_atoms_at(bigint[], bigint[], bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hart_atoms_at(bigint[], bigint[], bigint[]) TO hart_reader;

-- What a tree walk needs of the atoms at the given keys (reconstruction): a leaf's value, a
-- composite's geometry (EWKB; its LINESTRING runs through the children). Rows the caller may
-- read; i is the key's 1-based position in the arrays.
CREATE FUNCTION hart_walk_at(xs bigint[], ys bigint[], zs bigint[])
RETURNS TABLE (i bigint, value bytea, geom bytea)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp SET jit = off AS $$
DECLARE
    who   name := hart_invoker();
    lo    bigint[];
    names text[];
    b     int;
    gx    bigint[];
    gy    bigint[];
    gz    bigint[];
    gi    bigint[];
BEGIN
    IF NOT pg_has_role(who, 'hart_reader', 'USAGE') THEN
        RAISE EXCEPTION 'role % may not read atoms', who
            USING ERRCODE = 'insufficient_privilege', HINT = 'GRANT hart_reader TO the role';
    END IF;
    IF cardinality(xs) IS DISTINCT FROM cardinality(ys) OR cardinality(xs) IS DISTINCT FROM cardinality(zs) THEN
        RAISE EXCEPTION 'hart_walk_at: key arrays of different lengths' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT p.lo, p.names INTO lo, names FROM hart_partition_bounds() p;
    FOR b, gx, gy, gz, gi IN
        SELECT width_bucket(u.x, lo), array_agg(u.x), array_agg(u.y), array_agg(u.z), array_agg(u.n)
        FROM unnest(xs, ys, zs) WITH ORDINALITY AS u(x, y, z, n)
        WHERE u.x >= 0
        GROUP BY 1
    LOOP
        RETURN QUERY EXECUTE format(
            'SELECT u.n, a.value, CASE WHEN a.value IS NULL THEN ST_AsEWKB(a.geom) END
             FROM unnest($1, $2, $3, $4) AS u(x, y, z, n)
             JOIN %I a ON a.h_xy = u.x AND a.h_yz = u.y AND a.h_zm = u.z
             WHERE a.is_public OR $5 = ANY (a.owners)', names[b])
            USING gx, gy, gz, gi, who;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION hart_walk_at(bigint[], bigint[], bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hart_walk_at(bigint[], bigint[], bigint[]) TO hart_reader;

-- The staging table, now with the writer's child keys.
CREATE OR REPLACE FUNCTION hart_stage() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    who name := hart_invoker();
BEGIN
    -- A staging table of a session that began before this migration lacks `kids`.
    IF to_regclass('pg_temp.hart_stage') IS NOT NULL
       AND NOT EXISTS (SELECT FROM pg_attribute
                       WHERE attrelid = to_regclass('pg_temp.hart_stage') AND attname = 'kids' AND NOT attisdropped) THEN
        PERFORM hart_check_stage();
        DROP TABLE pg_temp.hart_stage;
    END IF;
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
            is_public    boolean  NOT NULL DEFAULT false,
            -- h_xy of each child, in the order of the LINESTRING's vertices (NULL: derive).
            kids         bigint[]
        ) ON COMMIT DELETE ROWS;
    ELSE
        PERFORM hart_check_stage();
    END IF;
    EXECUTE format('GRANT INSERT, SELECT ON pg_temp.hart_stage TO %I', who);
END
$$;

-- Structural checks of inserted atoms, once per statement over the inserted rows (the rules
-- of the row trigger it replaces, 0003).
CREATE FUNCTION atoms_validate_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.h_xy, n.h_yz, n.h_zm, n.modality, ST_AsText(n.pt) AS pt,
           NOT hart_key_matches(n.h_xy, n.h_yz, n.h_zm, n.modality, n.pt) AS wrong_key
    INTO bad
    FROM new_atoms n
    WHERE NOT hart_key_matches(n.h_xy, n.h_yz, n.h_zm, n.modality, n.pt)
       OR NOT (CASE WHEN n.value IS NOT NULL THEN ST_NumGeometries(n.geom) = 1
                    ELSE ST_NumGeometries(n.geom) = 2
                         AND GeometryType(ST_GeometryN(n.geom, 2)) = 'LINESTRING'
                         AND ST_NPoints(ST_GeometryN(n.geom, 2)) >= 2
               END)
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF bad.wrong_key THEN
        RAISE EXCEPTION 'new row for relation "atoms" violates check constraint "atoms_key_matches_point"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'atoms_key_matches_point', TABLE = 'atoms',
                  DETAIL = format('key (%s, %s, %s), modality %s, point %s', bad.h_xy, bad.h_yz,
                                  bad.h_zm, bad.modality, bad.pt),
                  HINT = 'the key must be hart_key(modality, x, y, z, m) of the atom''s own point';
    END IF;
    RAISE EXCEPTION 'new row for relation "atoms" violates check constraint "atoms_shape"'
        USING ERRCODE = 'check_violation', CONSTRAINT = 'atoms_shape', TABLE = 'atoms',
              DETAIL = 'a leaf has a value and a POINT ZM; a composite has no value, a POINT ZM and a LINESTRING ZM of at least 2 vertices';
END
$$;
DROP TRIGGER atoms_validate ON atoms;
DROP FUNCTION atoms_validate();
CREATE TRIGGER atoms_validate AFTER INSERT ON atoms
    REFERENCING NEW TABLE AS new_atoms FOR EACH STATEMENT
    EXECUTE FUNCTION atoms_validate_inserted();

-- The merge (0008's rules, restated where they changed):
--   * atoms are inserted with ON CONFLICT DO NOTHING in key order (a stable lock order),
--     each with its reference count preset to the number of staged composites that list it;
--     a staged composite that was not inserted existed already, so its children existed
--     too (the store keeps children of live composites; gc is excluded by the advisory
--     lock): an inserted child is never listed only by a composite that was not inserted,
--     except when a concurrent merge stored that composite first: then 40001, retry;
--   * staged atoms that were not inserted are compared with the stored ones (identical or a
--     collision, HT001) and claimed (proof of possession), per partition;
--   * inserted composites add one reference to each distinct child that existed before,
--     per partition; every such child must exist and be readable by the caller (HT002).
DROP FUNCTION hart_merge_stage();
CREATE FUNCTION hart_merge_stage(since timestamptz DEFAULT NULL,
                                 OUT created bigint, OUT existing bigint, OUT claimed bigint,
                                 OUT referenced bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
SET jit = off SET work_mem = '128MB' AS $$
DECLARE
    who    name := hart_invoker();
    lo     bigint[];
    names  text[];
    staged bigint;
    n_dup  bigint;
    n_bad  bigint;
    n_race bigint;
    n_kids bigint;
    -- Staged atoms that were not inserted (they existed), with what identifies their content.
    e_xy   bigint[]; e_yz bigint[]; e_zm bigint[];
    e_hash bytea[];  e_val bytea[]; e_mod smallint[]; e_geom bytea[]; e_pub boolean[];
    -- References from inserted composites to children that existed.
    k_xy   bigint[]; k_pt geometry[]; k_n bigint[];
    m      bigint;
    r      bigint;
    n_claim bigint;
BEGIN
    IF NOT pg_has_role(who, 'hart_writer', 'USAGE') THEN
        RAISE EXCEPTION 'role % may not write atoms', who
            USING ERRCODE = 'insufficient_privilege', HINT = 'GRANT hart_writer TO the role';
    END IF;
    PERFORM hart_check_stage();
    SELECT p.lo, p.names INTO lo, names FROM hart_partition_bounds() p;
    claimed := 0;
    referenced := 0;

    -- Keys staged twice: identical copies merge, different atoms on one key collide.
    SELECT count(*) - count(DISTINCT (h_xy, h_yz, h_zm)) INTO n_dup FROM pg_temp.hart_stage;
    IF n_dup > 0 THEN
        SELECT count(*) INTO n_bad FROM (
            SELECT 1 FROM pg_temp.hart_stage
            GROUP BY h_xy, h_yz, h_zm
            HAVING count(DISTINCT (content_hash, value, modality, ST_AsEWKB(geom))) > 1) d;
        IF n_bad > 0 THEN
            RAISE EXCEPTION 'position collision: % key(s) carry two different atoms in one batch', n_bad
                USING ERRCODE = 'HT001';
        END IF;
    END IF;

    -- A child list longer than the composite's line, or naming another modality.
    SELECT count(*) INTO n_bad FROM pg_temp.hart_stage s
    WHERE s.kids IS NOT NULL
      AND (s.value IS NOT NULL OR ST_NumGeometries(s.geom) <> 2
           OR cardinality(s.kids) <> ST_NPoints(ST_GeometryN(s.geom, 2))
           OR EXISTS (SELECT FROM unnest(s.kids) k WHERE k IS NULL OR (k >> 56) <> s.modality));
    IF n_bad > 0 THEN
        RAISE EXCEPTION '% staged atom(s) have a child key list that does not match their geometry', n_bad
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'kids holds the h_xy of each vertex of the composite''s LINESTRING, in order; NULL for leaves';
    END IF;

    WITH s AS (
        SELECT DISTINCT ON (h_xy, h_yz, h_zm) * FROM pg_temp.hart_stage
        ORDER BY h_xy, h_yz, h_zm
    ), kids AS (
        -- Distinct children of each staged composite (a child repeated in one parent counts
        -- once), identified by (h_xy, point): the point is the child's own, h_xy finds it.
        SELECT DISTINCT s.h_xy AS p_xy, s.h_yz AS p_yz, s.h_zm AS p_zm,
               coalesce(v.c_xy, hart_xy_of_point(s.modality, v.pt)) AS c_xy, v.pt
        FROM s
        CROSS JOIN LATERAL ROWS FROM (ST_DumpPoints(ST_GeometryN(s.geom, 2)), unnest(s.kids)) AS v(path, pt, c_xy)
        WHERE s.value IS NULL
    ), counts AS (
        SELECT k.c_xy, k.pt, count(*) AS n FROM kids k GROUP BY 1, 2
    ), ins AS (
        INSERT INTO atoms AS a (h_xy, h_yz, h_zm, geom, value, modality, content_hash, meta,
                                is_public, owners, created_by, updated_by, ref_count)
        SELECT s.h_xy, s.h_yz, s.h_zm, s.geom, s.value, s.modality, s.content_hash, s.meta,
               s.is_public, ARRAY[who], who, who, coalesce(c.n, 0)
        FROM s
        LEFT JOIN counts c ON c.c_xy = s.h_xy AND c.pt = ST_GeometryN(s.geom, 1)
        ORDER BY s.h_xy, s.h_yz, s.h_zm
        ON CONFLICT (h_xy, h_yz, h_zm) DO NOTHING
        RETURNING a.h_xy, a.h_yz, a.h_zm, a.pt
    ), kids_of_new AS (
        SELECT k.* FROM kids k
        WHERE EXISTS (SELECT FROM ins p WHERE p.h_xy = k.p_xy AND p.h_yz = k.p_yz AND p.h_zm = k.p_zm)
    ), old_kids AS (
        SELECT k.c_xy, k.pt, count(*) AS n FROM kids_of_new k
        WHERE NOT EXISTS (SELECT FROM ins c WHERE c.h_xy = k.c_xy AND c.pt = k.pt)
        GROUP BY 1, 2
    ), not_ins AS (
        SELECT s.* FROM s
        WHERE NOT EXISTS (SELECT FROM ins i WHERE i.h_xy = s.h_xy AND i.h_yz = s.h_yz AND i.h_zm = s.h_zm)
    )
    SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM ins),
           -- Inserted children listed by a staged composite that was not inserted.
           (SELECT count(*) FROM kids k JOIN ins c ON c.h_xy = k.c_xy AND c.pt = k.pt
            WHERE NOT EXISTS (SELECT FROM ins p WHERE p.h_xy = k.p_xy AND p.h_yz = k.p_yz AND p.h_zm = k.p_zm)),
           e.xy, e.yz, e.zm, e.hash, e.val, e.mod, e.geom, e.pub, o.xy, o.pt, o.n
    INTO staged, created, n_race, e_xy, e_yz, e_zm, e_hash, e_val, e_mod, e_geom, e_pub, k_xy, k_pt, k_n
    FROM (SELECT array_agg(h_xy) AS xy, array_agg(h_yz) AS yz, array_agg(h_zm) AS zm,
                 array_agg(content_hash) AS hash, array_agg(value) AS val, array_agg(modality) AS mod,
                 array_agg(ST_AsEWKB(geom)) AS geom, array_agg(is_public) AS pub
          FROM not_ins) e,
         (SELECT array_agg(c_xy) AS xy, array_agg(pt) AS pt, array_agg(n) AS n FROM old_kids) o;

    IF n_race > 0 THEN
        RAISE EXCEPTION 'a concurrent merge stored composites of this batch first'
            USING ERRCODE = 'serialization_failure', HINT = 'retry the batch';
    END IF;
    existing := staged - created;

    -- Atoms that were there already: identical (then claimed), or a collision. Per partition.
    IF e_xy IS NOT NULL THEN
        FOR m, r, n_claim IN
            SELECT g.missing, g.differ, g.claims FROM (
                SELECT width_bucket(u.x, lo) AS b, array_agg(u.x) AS x, array_agg(u.y) AS y, array_agg(u.z) AS z,
                       array_agg(u.h) AS h, array_agg(u.v) AS v, array_agg(u.m) AS m, array_agg(u.g) AS g,
                       array_agg(u.p) AS p
                FROM unnest(e_xy, e_yz, e_zm, e_hash, e_val, e_mod, e_geom, e_pub) AS u(x, y, z, h, v, m, g, p)
                GROUP BY 1) q
            CROSS JOIN LATERAL hart_merge_existing(names[q.b], who, q.x, q.y, q.z, q.h, q.v, q.m, q.g, q.p) g
        LOOP
            IF m > 0 THEN
                RAISE EXCEPTION '% staged atom(s) were neither inserted nor found (removed concurrently)', m
                    USING ERRCODE = 'serialization_failure', HINT = 'retry the batch';
            END IF;
            IF r > 0 THEN
                -- Nothing about the stored atom is revealed: the caller only learns its key is taken.
                RAISE EXCEPTION 'position collision: % staged atom(s) differ from the atoms stored on their keys', r
                    USING ERRCODE = 'HT001',
                          HINT = 'two different contents map to one position; report it with the content hashes';
            END IF;
            claimed := claimed + n_claim;
        END LOOP;
    END IF;

    -- One reference from each inserted composite to each distinct child that existed. Every
    -- such child must exist and be readable by the caller: no references to what it cannot see.
    IF k_xy IS NOT NULL THEN
        FOR m, r, n_kids IN
            SELECT upd.matched, upd.before, cardinality(q.x)
            FROM (SELECT width_bucket(u.x, lo) AS b, array_agg(u.x) AS x, array_agg(u.pt) AS pt, array_agg(u.n) AS n
                  FROM unnest(k_xy, k_pt, k_n) AS u(x, pt, n) GROUP BY 1) q
            CROSS JOIN LATERAL hart_merge_references(names[q.b], who, since, q.x, q.pt, q.n) upd
        LOOP
            IF m <> n_kids THEN
                RAISE EXCEPTION '% child atom(s) of the new composites are missing or not readable by %',
                    n_kids - m, who
                    USING ERRCODE = 'HT002',
                          HINT = 'put children before their parents, in this batch or an earlier one';
            END IF;
            referenced := referenced + r;
        END LOOP;
    END IF;
END
$$;
COMMENT ON FUNCTION hart_merge_stage(timestamptz) IS
    'Merge pg_temp.hart_stage into atoms: insert new, claim identical, refuse collisions, count child references.';

-- The two helpers below are internal to hart_merge_stage: not SECURITY DEFINER, and only
-- their owner (hart_owner, which the merge runs as) may execute them.
--
-- One partition's share of the merge's existing atoms: how many are missing, how many differ
-- from the staged copy, and how many the caller newly holds (claimed by this call).
CREATE FUNCTION hart_merge_existing(part text, who name, x bigint[], y bigint[], z bigint[], h bytea[],
                                    v bytea[], m smallint[], g bytea[], p boolean[],
                                    OUT missing bigint, OUT differ bigint, OUT claims bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    need bigint;
BEGIN
    EXECUTE format(
        'SELECT count(*) FILTER (WHERE a.h_xy IS NULL),
                count(*) FILTER (WHERE a.h_xy IS NOT NULL AND NOT (a.content_hash = u.h AND a.modality = u.m
                                 AND a.value IS NOT DISTINCT FROM u.v AND ST_AsEWKB(a.geom) = u.g)),
                count(*) FILTER (WHERE a.h_xy IS NOT NULL AND NOT a.is_public AND (u.p OR NOT $9 = ANY (a.owners)))
         FROM unnest($1, $2, $3, $4, $5, $6, $7, $8) AS u(x, y, z, h, v, m, g, p)
         LEFT JOIN %I a ON a.h_xy = u.x AND a.h_yz = u.y AND a.h_zm = u.z', part)
        INTO missing, differ, need
        USING x, y, z, h, v, m, g, p, who;
    claims := 0;
    IF need > 0 AND missing = 0 AND differ = 0 THEN
        -- Proof of possession: the caller becomes a holder of each private atom it could
        -- write identically; publishing is a right of every holder (0008).
        EXECUTE format(
            'WITH upd AS (
                UPDATE %I a
                SET owners    = CASE WHEN u.p THEN a.owners ELSE a.owners || $5 END,
                    is_public = u.p OR a.is_public
                FROM unnest($1, $2, $3, $4) AS u(x, y, z, p)
                WHERE a.h_xy = u.x AND a.h_yz = u.y AND a.h_zm = u.z
                  AND NOT a.is_public AND (u.p OR NOT $5 = ANY (a.owners))
                RETURNING 1)
             SELECT count(*) FROM upd', part)
            INTO claims
            USING x, y, z, p, who;
    END IF;
END
$$;

-- One partition's share of the child references: adds n to each child (h_xy, pt) the caller
-- can read; returns how many children matched and the references added to children created
-- before `since`.
CREATE FUNCTION hart_merge_references(part text, who name, since timestamptz, x bigint[], pt geometry[], n bigint[],
                                      OUT matched bigint, OUT before bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    EXECUTE format(
        'WITH upd AS (
            UPDATE %I a SET ref_count = a.ref_count + c.n
            FROM (SELECT * FROM unnest($1, $2, $3) AS c(x, pt, n) ORDER BY 1) c
            WHERE a.h_xy = c.x AND a.pt = c.pt AND (a.is_public OR $4 = ANY (a.owners))
            RETURNING c.n, a.created_at < $5 AS old)
         SELECT count(*), coalesce(sum(n) FILTER (WHERE old), 0) FROM upd', part)
        INTO matched, before
        USING x, pt, n, who, since;
END
$$;

REVOKE ALL ON FUNCTION hart_merge_existing(text, name, bigint[], bigint[], bigint[], bytea[], bytea[], smallint[], bytea[], boolean[]),
    hart_merge_references(text, name, timestamptz, bigint[], geometry[], bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION hart_merge_stage(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hart_merge_stage(timestamptz) TO hart_writer;

-- Point lookups routed to the partition. A prepared lookup on `atoms` itself runs a generic
-- plan that locks and prunes all 256 partitions on every execution (PostgreSQL 15): ~3x
-- slower than the same lookup on one table. So readers may also read a partition directly
-- (the backend routes a key with hart_partition_bounds()), under the very read policy of
-- `atoms`, repeated on each partition. Reads through `atoms` are unchanged: policies of
-- partitions do not apply there. Partitions remain unwritable except through `atoms`.
DO $$
DECLARE
    part text;
BEGIN
    FOR part IN SELECT partition_name FROM atom_partition_plan ORDER BY lo LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', part);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', part);
        EXECUTE format('CREATE POLICY atoms_read ON %I FOR SELECT TO hart_reader
                            USING (is_public OR current_user = ANY (owners))', part);
        EXECUTE format('GRANT SELECT ON %I TO hart_reader', part);
    END LOOP;
END
$$;

-- Reference counts recounted from scratch (fsck and the tests): one reference per distinct
-- child of each composite, one per live object on its root. A child is matched by (modality,
-- point): each vertex is the child's own point, and every stored key was checked against its
-- point, so no key needs deriving in PL/pgSQL (which cost ~5 us per edge). Rows: atoms whose
-- stored count differs (hash, stored, recount), and references to points no atom has (hash
-- and stored NULL). At most max_rows rows (NULL: all).
CREATE FUNCTION hart_refcount_mismatches(max_rows bigint DEFAULT 100)
RETURNS TABLE (content_hash text, stored bigint, recount bigint)
LANGUAGE sql STABLE SET jit = off AS $$
    WITH edges AS (
        SELECT DISTINCT p.h_xy, p.h_yz, p.h_zm, p.modality, ST_AsBinary(v.geom) AS pt
        FROM atoms p CROSS JOIN LATERAL ST_DumpPoints(ST_GeometryN(p.geom, 2)) v
        WHERE p.value IS NULL
    ), kid_refs AS (
        SELECT e.modality, e.pt, count(*) AS n FROM edges e GROUP BY 1, 2
    ), root_refs AS (
        SELECT o.root_h_xy AS h_xy, o.root_h_yz AS h_yz, o.root_h_zm AS h_zm, count(*) AS n
        FROM objects o WHERE o.deleted_at IS NULL GROUP BY 1, 2, 3
    ), own AS (
        SELECT a.h_xy, a.h_yz, a.h_zm, a.modality, ST_AsBinary(a.pt) AS pt, a.ref_count, a.content_hash FROM atoms a
    ), with_kids AS (
        SELECT a.h_xy, a.h_yz, a.h_zm, a.ref_count, a.content_hash, coalesce(k.n, 0) AS n
        FROM own a FULL JOIN kid_refs k ON k.modality = a.modality AND k.pt = a.pt
    )
    SELECT encode(w.content_hash, 'hex'), w.ref_count, coalesce(w.n, 0) + coalesce(r.n, 0)
    FROM with_kids w
    FULL JOIN root_refs r ON r.h_xy = w.h_xy AND r.h_yz = w.h_yz AND r.h_zm = w.h_zm
    WHERE w.content_hash IS NULL OR w.ref_count <> coalesce(w.n, 0) + coalesce(r.n, 0)
    LIMIT max_rows
$$;
COMMENT ON FUNCTION hart_refcount_mismatches(bigint) IS
    'Atoms whose reference count differs from a recount from the geometry and the live objects (fsck).';
