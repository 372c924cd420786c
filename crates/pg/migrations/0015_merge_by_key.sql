-- 0015: a faster merge (decision 0014): a fast path when every staged atom was inserted, and,
-- with hart_native, children found by key, computed in C.
--
-- 1. Loading a new object, every staged atom is usually new. The merge still computed, per
--    batch, which staged composites were not inserted (none), whether an inserted child was
--    listed only by one of those (a race: none), and the children that existed before by
--    joining every (composite, child) pair with the inserted rows. For text, whose lines list
--    ~25 children each, those three steps were ~300 ms of a ~1 s merge of 15,000 atoms; for
--    binary ~80 of ~400 ms. When the counts show that every staged atom was inserted, the
--    children that existed are the counted ones that were not inserted (a join of the
--    children, not of the pairs), and the rest is skipped.
-- 2. A staged composite's children were identified by (h_xy sent by the writer, the vertex as
--    a PostGIS point): every vertex dumped as a geometry (ST_DumpPoints), then hashed and
--    compared as one in a DISTINCT, a GROUP BY and joins: for text ~380 ms of the merge.
--    With hart_native installed, hart_native_line_keys reads the line's WKB once and returns
--    its distinct vertices' keys (the Hilbert key of each vertex, derived by the server, as
--    before never taken from the caller), and everything after joins on the primary key:
--    counts, the insert's preset reference counts, the race check, and the reference updates
--    (by primary key in each partition). Without hart_native, the ELSE branch identifies
--    children as before (PL/pgSQL cannot derive keys cheaply, so it keeps the writer's h_xy).
SET LOCAL ROLE hart_owner;


-- The reference updates of one partition: by primary key (y, z given: hart_native), or by
-- h_xy and own point (pt given). Each child must exist and be readable by the caller.
-- Planned without statistics, like 0013's: the index is always right here.
DROP FUNCTION hart_merge_references(text, name, timestamptz, bigint[], geometry[], bigint[]);
CREATE FUNCTION hart_merge_references(part text, who name, since timestamptz, x bigint[], y bigint[], z bigint[],
                                      pt geometry[], n bigint[], OUT matched bigint, OUT before bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off AS $$
BEGIN
    IF y IS NOT NULL THEN
        EXECUTE format(
            'WITH upd AS (
                UPDATE %I a SET ref_count = a.ref_count + c.n
                FROM (SELECT * FROM unnest($1, $2, $3, $4) AS c(x, y, z, n) ORDER BY 1, 2, 3) c
                WHERE a.h_xy = c.x AND a.h_yz = c.y AND a.h_zm = c.z AND (a.is_public OR $5 = ANY (a.owners))
                RETURNING c.n, a.created_at < $6 AS old)
             SELECT count(*), coalesce(sum(n) FILTER (WHERE old), 0) FROM upd', part)
            INTO matched, before
            USING x, y, z, n, who, since;
    ELSE
        EXECUTE format(
            'WITH upd AS (
                UPDATE %I a SET ref_count = a.ref_count + c.n
                FROM (SELECT * FROM unnest($1, $2, $3) AS c(x, pt, n) ORDER BY 1) c
                WHERE a.h_xy = c.x AND a.pt = c.pt AND (a.is_public OR $4 = ANY (a.owners))
                RETURNING c.n, a.created_at < $5 AS old)
             SELECT count(*), coalesce(sum(n) FILTER (WHERE old), 0) FROM upd', part)
            INTO matched, before
            USING x, pt, n, who, since;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION
    hart_merge_references(text, name, timestamptz, bigint[], bigint[], bigint[], geometry[], bigint[]) FROM PUBLIC;

CREATE OR REPLACE FUNCTION hart_merge_stage(since timestamptz DEFAULT NULL,
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
    e_hash bytea[];  e_val bytea[]; e_mod smallint[]; e_geom bytea[]; e_pub boolean[]; e_packs bytea[];
    -- References from inserted composites to children that existed.
    -- By key (hart_native) or by h_xy and own point (PL/pgSQL; k_yz, k_zm NULL).
    k_xy   bigint[]; k_yz bigint[]; k_zm bigint[]; k_pt geometry[]; k_n bigint[];
    m      bigint;
    r      bigint;
    n_claim bigint;
    native boolean := hart_hilbert_native();
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

    IF native THEN
        WITH s AS (
            -- Of two copies of one key, the one with a pack (a copy without is just as valid).
            SELECT DISTINCT ON (h_xy, h_yz, h_zm) * FROM pg_temp.hart_stage
            ORDER BY h_xy, h_yz, h_zm, leaves IS NULL
        ), kids AS (
            -- Distinct children of each staged composite, by key, computed in C from the line's
            -- vertices (hart_native_line_keys: the vertex is the child's own point, its key is
            -- derived, never taken from the caller; a child listed twice counts once).
            SELECT s.h_xy AS p_xy, s.h_yz AS p_yz, s.h_zm AS p_zm, k.h_xy AS c_xy, k.h_yz AS c_yz, k.h_zm AS c_zm
            FROM s
            CROSS JOIN LATERAL hart_native_line_keys(s.modality, ST_AsBinary(ST_GeometryN(s.geom, 2))) k
            WHERE s.value IS NULL
        ), counts AS (
            SELECT k.c_xy, k.c_yz, k.c_zm, count(*) AS n FROM kids k GROUP BY 1, 2, 3
        ), ins AS (
            INSERT INTO atoms AS a (h_xy, h_yz, h_zm, geom, value, modality, content_hash, meta,
                                    is_public, owners, created_by, updated_by, ref_count, leaves)
            SELECT s.h_xy, s.h_yz, s.h_zm, s.geom, s.value, s.modality, s.content_hash, s.meta,
                   s.is_public, ARRAY[who], who, who, coalesce(c.n, 0), s.leaves
            FROM s
            LEFT JOIN counts c ON c.c_xy = s.h_xy AND c.c_yz = s.h_yz AND c.c_zm = s.h_zm
            ORDER BY s.h_xy, s.h_yz, s.h_zm
            ON CONFLICT (h_xy, h_yz, h_zm) DO NOTHING
            RETURNING a.h_xy, a.h_yz, a.h_zm
        ), tally AS MATERIALIZED (  -- counted once (inlined, each use of t.* re-counted)
            SELECT (SELECT count(*) FROM s) AS staged, (SELECT count(*) FROM ins) AS created
        ), kids_of_new AS (
            SELECT k.* FROM kids k
            WHERE EXISTS (SELECT FROM ins p WHERE p.h_xy = k.p_xy AND p.h_yz = k.p_yz AND p.h_zm = k.p_zm)
        ), old_kids AS (
            SELECT k.c_xy, k.c_yz, k.c_zm, count(*) AS n FROM kids_of_new k
            WHERE NOT EXISTS (SELECT FROM ins c WHERE c.h_xy = k.c_xy AND c.h_yz = k.c_yz AND c.h_zm = k.c_zm)
            GROUP BY 1, 2, 3
        ), old_counted AS (
            -- When every staged atom was inserted, every staged composite is new: the children
            -- that existed are the counted ones that were not inserted, each with its count.
            SELECT c.c_xy, c.c_yz, c.c_zm, c.n FROM counts c
            WHERE NOT EXISTS (SELECT FROM ins i WHERE i.h_xy = c.c_xy AND i.h_yz = c.c_yz AND i.h_zm = c.c_zm)
        ), not_ins AS (
            SELECT s.* FROM s
            WHERE NOT EXISTS (SELECT FROM ins i WHERE i.h_xy = s.h_xy AND i.h_yz = s.h_yz AND i.h_zm = s.h_zm)
        )
        -- The general forms (a race, existing atoms, references from some new composites) only
        -- run when some staged atom was not inserted: the CASE and the one-time filters on
        -- t.created <> t.staged keep PostgreSQL from evaluating them otherwise.
        SELECT t.staged, t.created,
               CASE WHEN t.created = t.staged THEN 0 ELSE
                   -- Inserted children listed by a staged composite that was not inserted.
                   (SELECT count(*) FROM kids k JOIN ins c ON c.h_xy = k.c_xy AND c.h_yz = k.c_yz AND c.h_zm = k.c_zm
                    WHERE NOT EXISTS (SELECT FROM ins p WHERE p.h_xy = k.p_xy AND p.h_yz = k.p_yz AND p.h_zm = k.p_zm))
               END,
               e.xy, e.yz, e.zm, e.hash, e.val, e.mod, e.geom, e.pub, e.packs, o.xy, o.yz, o.zm, o.n
        INTO staged, created, n_race, e_xy, e_yz, e_zm, e_hash, e_val, e_mod, e_geom, e_pub, e_packs, k_xy, k_yz, k_zm, k_n
        FROM tally t,
             LATERAL (SELECT array_agg(h_xy) AS xy, array_agg(h_yz) AS yz, array_agg(h_zm) AS zm,
                             array_agg(content_hash) AS hash, array_agg(value) AS val, array_agg(modality) AS mod,
                             array_agg(ST_AsEWKB(geom)) AS geom, array_agg(is_public) AS pub,
                             array_agg(leaves) AS packs
                      FROM not_ins WHERE t.created <> t.staged) e,
             LATERAL (SELECT array_agg(u.c_xy) AS xy, array_agg(u.c_yz) AS yz, array_agg(u.c_zm) AS zm, array_agg(u.n) AS n
                      FROM (SELECT * FROM old_counted WHERE t.created = t.staged
                            UNION ALL
                            SELECT * FROM old_kids WHERE t.created <> t.staged) u) o;
    ELSE
        WITH s AS (
            -- Of two copies of one key, the one with a pack (a copy without is just as valid).
            SELECT DISTINCT ON (h_xy, h_yz, h_zm) * FROM pg_temp.hart_stage
            ORDER BY h_xy, h_yz, h_zm, leaves IS NULL
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
                                    is_public, owners, created_by, updated_by, ref_count, leaves)
            SELECT s.h_xy, s.h_yz, s.h_zm, s.geom, s.value, s.modality, s.content_hash, s.meta,
                   s.is_public, ARRAY[who], who, who, coalesce(c.n, 0), s.leaves
            FROM s
            LEFT JOIN counts c ON c.c_xy = s.h_xy AND c.pt = ST_GeometryN(s.geom, 1)
            ORDER BY s.h_xy, s.h_yz, s.h_zm
            ON CONFLICT (h_xy, h_yz, h_zm) DO NOTHING
            RETURNING a.h_xy, a.h_yz, a.h_zm, a.pt
        ), tally AS MATERIALIZED (  -- counted once (inlined, each use of t.* re-counted)
            SELECT (SELECT count(*) FROM s) AS staged, (SELECT count(*) FROM ins) AS created
        ), kids_of_new AS (
            SELECT k.* FROM kids k
            WHERE EXISTS (SELECT FROM ins p WHERE p.h_xy = k.p_xy AND p.h_yz = k.p_yz AND p.h_zm = k.p_zm)
        ), old_kids AS (
            SELECT k.c_xy, k.pt, count(*) AS n FROM kids_of_new k
            WHERE NOT EXISTS (SELECT FROM ins c WHERE c.h_xy = k.c_xy AND c.pt = k.pt)
            GROUP BY 1, 2
        ), old_counted AS (
            -- When every staged atom was inserted, every staged composite is new: the children
            -- that existed are the counted ones that were not inserted, each with its count.
            SELECT c.c_xy, c.pt, c.n FROM counts c
            WHERE NOT EXISTS (SELECT FROM ins i WHERE i.h_xy = c.c_xy AND i.pt = c.pt)
        ), not_ins AS (
            SELECT s.* FROM s
            WHERE NOT EXISTS (SELECT FROM ins i WHERE i.h_xy = s.h_xy AND i.h_yz = s.h_yz AND i.h_zm = s.h_zm)
        )
        -- The general forms (a race, existing atoms, references from some new composites) only
        -- run when some staged atom was not inserted: the CASE and the one-time filters on
        -- t.created <> t.staged keep PostgreSQL from evaluating them otherwise.
        SELECT t.staged, t.created,
               CASE WHEN t.created = t.staged THEN 0 ELSE
                   -- Inserted children listed by a staged composite that was not inserted.
                   (SELECT count(*) FROM kids k JOIN ins c ON c.h_xy = k.c_xy AND c.pt = k.pt
                    WHERE NOT EXISTS (SELECT FROM ins p WHERE p.h_xy = k.p_xy AND p.h_yz = k.p_yz AND p.h_zm = k.p_zm))
               END,
               e.xy, e.yz, e.zm, e.hash, e.val, e.mod, e.geom, e.pub, e.packs, o.xy, o.pt, o.n
        INTO staged, created, n_race, e_xy, e_yz, e_zm, e_hash, e_val, e_mod, e_geom, e_pub, e_packs, k_xy, k_pt, k_n
        FROM tally t,
             LATERAL (SELECT array_agg(h_xy) AS xy, array_agg(h_yz) AS yz, array_agg(h_zm) AS zm,
                             array_agg(content_hash) AS hash, array_agg(value) AS val, array_agg(modality) AS mod,
                             array_agg(ST_AsEWKB(geom)) AS geom, array_agg(is_public) AS pub,
                             array_agg(leaves) AS packs
                      FROM not_ins WHERE t.created <> t.staged) e,
             LATERAL (SELECT array_agg(u.c_xy) AS xy, array_agg(u.pt) AS pt, array_agg(u.n) AS n
                      FROM (SELECT * FROM old_counted WHERE t.created = t.staged
                            UNION ALL
                            SELECT * FROM old_kids WHERE t.created <> t.staged) u) o;
    END IF;

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
                       array_agg(u.p) AS p, array_agg(u.l) AS l
                FROM unnest(e_xy, e_yz, e_zm, e_hash, e_val, e_mod, e_geom, e_pub, e_packs)
                     AS u(x, y, z, h, v, m, g, p, l)
                GROUP BY 1) q
            CROSS JOIN LATERAL hart_merge_existing(names[q.b], who, q.x, q.y, q.z, q.h, q.v, q.m, q.g, q.p, q.l) g
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
            FROM (SELECT width_bucket(u.x, lo) AS b, array_agg(u.x) AS x, array_agg(u.y) AS y, array_agg(u.z) AS z,
                         array_agg(u.pt) AS pt, array_agg(u.n) AS n
                  FROM unnest(k_xy, k_yz, k_zm, k_pt, k_n) AS u(x, y, z, pt, n) GROUP BY 1) q
            CROSS JOIN LATERAL hart_merge_references(names[q.b], who, since, q.x,
                                                     CASE WHEN native THEN q.y END, CASE WHEN native THEN q.z END,
                                                     CASE WHEN native THEN NULL ELSE q.pt END, q.n) upd
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
