-- 0012: leaf packs (decision 0013). A composite whose children are all leaves may carry
-- `leaves`: its children's values in order, each preceded by its length in one byte. A read
-- of such a composite returns its bytes in one row instead of one row per leaf (`cat` reads
-- ~16x fewer rows). The pack is derived data, not part of an atom's identity:
--   * the writer's backend builds it from the leaves it stages; it may leave it out (NULL),
--     and then a reader walks the children as before;
--   * the server does not recompute it; a reader checks it against the composite's content
--     hash (each leaf hashed, then the node) and walks the children when it does not match;
--   * it shows its leaves' bytes to whoever can read the composite, so holding a packed
--     composite needs proof of those bytes too: the same pack, or read access to every child
--     (docs/SECURITY.md). A new composite already needs the latter (HT002).
-- Like the other content columns it never changes once written.
SET LOCAL ROLE hart_owner;

ALTER TABLE atoms ADD COLUMN leaves bytea;
-- Packs stay in the row (compressed at most), never in the TOAST table: a read of a packed
-- composite is one index probe and one heap tuple.
ALTER TABLE atoms ALTER COLUMN leaves SET STORAGE MAIN;
ALTER TABLE atoms ADD CONSTRAINT atoms_leaves_shape
    CHECK (leaves IS NULL OR (value IS NULL AND octet_length(leaves) BETWEEN 2 AND 64 * 65));
COMMENT ON COLUMN atoms.leaves IS
    'Composites whose children are all leaves: each child''s value preceded by its length (one byte), in order. Derived; NULL when not built.';

CREATE OR REPLACE FUNCTION atoms_content_is_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'atom content is immutable: key, geometry, modality, content_hash, value and leaves cannot change'
        USING ERRCODE = 'integrity_constraint_violation',
              HINT = 'write a new atom instead; only meta, is_public and ref_count change';
END
$$;
DROP TRIGGER atoms_content_is_immutable ON atoms;
CREATE TRIGGER atoms_content_is_immutable
    BEFORE UPDATE OF h_xy, h_yz, h_zm, geom, modality, content_hash, value, leaves ON atoms FOR EACH ROW
    WHEN (OLD.h_xy <> NEW.h_xy OR OLD.h_yz <> NEW.h_yz OR OLD.h_zm <> NEW.h_zm
          OR OLD.modality <> NEW.modality OR OLD.content_hash <> NEW.content_hash
          OR OLD.value IS DISTINCT FROM NEW.value
          OR OLD.leaves IS DISTINCT FROM NEW.leaves
          OR ST_AsEWKB(OLD.geom) <> ST_AsEWKB(NEW.geom))
    EXECUTE FUNCTION atoms_content_is_immutable();

-- The staging table, now with packs.
CREATE OR REPLACE FUNCTION hart_stage() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    who name := hart_invoker();
BEGIN
    -- A staging table of a session that began before this migration lacks `leaves`.
    IF to_regclass('pg_temp.hart_stage') IS NOT NULL
       AND NOT EXISTS (SELECT FROM pg_attribute
                       WHERE attrelid = to_regclass('pg_temp.hart_stage') AND attname = 'leaves' AND NOT attisdropped) THEN
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
            kids         bigint[],
            -- The composite's pack (0012), or NULL.
            leaves       bytea
        ) ON COMMIT DELETE ROWS;
    ELSE
        PERFORM hart_check_stage();
    END IF;
    EXECUTE format('GRANT INSERT, SELECT ON pg_temp.hart_stage TO %I', who);
END
$$;

-- The merge of 0010, now storing packs and checking claims of packed composites.
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
           e.xy, e.yz, e.zm, e.hash, e.val, e.mod, e.geom, e.pub, e.packs, o.xy, o.pt, o.n
    INTO staged, created, n_race, e_xy, e_yz, e_zm, e_hash, e_val, e_mod, e_geom, e_pub, e_packs, k_xy, k_pt, k_n
    FROM (SELECT array_agg(h_xy) AS xy, array_agg(h_yz) AS yz, array_agg(h_zm) AS zm,
                 array_agg(content_hash) AS hash, array_agg(value) AS val, array_agg(modality) AS mod,
                 array_agg(ST_AsEWKB(geom)) AS geom, array_agg(is_public) AS pub,
                 array_agg(leaves) AS packs
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
DROP FUNCTION hart_merge_existing(text, name, bigint[], bigint[], bigint[], bytea[], bytea[], smallint[], bytea[], boolean[]);
CREATE FUNCTION hart_merge_existing(part text, who name, x bigint[], y bigint[], z bigint[], h bytea[],
                                    v bytea[], m smallint[], g bytea[], p boolean[], l bytea[],
                                    OUT missing bigint, OUT differ bigint, OUT claims bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    need     bigint;
    unproven bigint;
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
        -- A pack shows its leaves' bytes: to hold a packed composite, the caller staged the
        -- same pack, or can read each child (held or public, or staged in this batch, which
        -- it will hold once the merge is done). Otherwise HT002, as for a new composite.
        EXECUTE format(
            'SELECT count(*) FROM unnest($1, $2, $3, $4) AS u(x, y, z, l)
             JOIN %I a ON a.h_xy = u.x AND a.h_yz = u.y AND a.h_zm = u.z
             WHERE a.leaves IS NOT NULL AND a.leaves IS DISTINCT FROM u.l
               AND NOT a.is_public AND NOT $5 = ANY (a.owners)
               AND EXISTS (
                   SELECT FROM ST_DumpPoints(ST_GeometryN(a.geom, 2)) v
                   CROSS JOIN LATERAL (SELECT hart_xy_of_point(a.modality, v.geom) AS xy) k
                   WHERE NOT EXISTS (SELECT FROM atoms c WHERE c.h_xy = k.xy AND c.pt = v.geom
                                                           AND (c.is_public OR $5 = ANY (c.owners)))
                     AND NOT EXISTS (SELECT FROM pg_temp.hart_stage t
                                     WHERE t.h_xy = k.xy AND ST_GeometryN(t.geom, 1) = v.geom))', part)
            INTO unproven
            USING x, y, z, l, who;
        IF unproven > 0 THEN
            RAISE EXCEPTION '% stored composite(s) carry leaves that % can neither show nor read', unproven, who
                USING ERRCODE = 'HT002',
                      HINT = 'stage each child of the composite (the backend stages whole objects)';
        END IF;
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

REVOKE ALL ON FUNCTION hart_merge_existing(text, name, bigint[], bigint[], bigint[], bytea[], bytea[], smallint[], bytea[], boolean[], bytea[])
    FROM PUBLIC;
REVOKE ALL ON FUNCTION hart_merge_stage(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hart_merge_stage(timestamptz) TO hart_writer;


-- Packs that differ from their children's values (fsck): each composite's vertices matched to
-- leaves by (modality, point), as hart_refcount_mismatches does. Rows: the composite's content
-- hash. At most max_rows rows (NULL: all).
CREATE FUNCTION hart_pack_mismatches(max_rows bigint DEFAULT 100)
RETURNS TABLE (content_hash text)
LANGUAGE sql STABLE SET jit = off AS $$
    WITH edges AS (
        SELECT p.h_xy, p.h_yz, p.h_zm, p.modality, v.path[1] AS i, ST_AsBinary(v.geom) AS pt
        FROM atoms p CROSS JOIN LATERAL ST_DumpPoints(ST_GeometryN(p.geom, 2)) v
        WHERE p.leaves IS NOT NULL
    ), vals AS (
        SELECT a.modality, ST_AsBinary(a.pt) AS pt, a.value FROM atoms a WHERE a.value IS NOT NULL
    ), rebuilt AS (
        SELECT e.h_xy, e.h_yz, e.h_zm, count(l.value) = count(*) AS complete,
               string_agg(set_byte('\x00'::bytea, 0, octet_length(l.value)) || l.value, ''::bytea ORDER BY e.i) AS pack
        FROM edges e LEFT JOIN vals l ON l.modality = e.modality AND l.pt = e.pt
        GROUP BY 1, 2, 3
    )
    SELECT encode(a.content_hash, 'hex')
    FROM atoms a JOIN rebuilt r ON a.h_xy = r.h_xy AND a.h_yz = r.h_yz AND a.h_zm = r.h_zm
    WHERE NOT r.complete OR r.pack IS DISTINCT FROM a.leaves
    LIMIT max_rows
$$;
COMMENT ON FUNCTION hart_pack_mismatches(bigint) IS
    'Composites whose pack (leaves) differs from their children''s values (fsck).';
