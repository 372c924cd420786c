-- 0006: reconstruction in SQL: an object's bytes from its root atom, without the application.
--
-- A composite's children are the vertices of its LINESTRING ZM, in order: vertex -> key ->
-- primary-key lookup, level by level (a recursive CTE is breadth-first: each iteration
-- resolves one level of the tree with one index probe per child, pruned to one partition).
-- The probe uses h_xy (the leading key column) and the point itself (atoms.pt = vertex),
-- which identify the atom as surely as the whole key and need one Hilbert encoding, not three. The bytes are the leaves' values in the order of their paths (the vertex
-- indices from the root, as big-endian int4s, so that bytea order is tree order).
--
-- Children have their parent's modality: hart-core builds every composite of a tree with the
-- tree's modality (crates/core/src/tree.rs), so a vertex's key uses the parent's modality byte.
--
-- The functions are SECURITY INVOKER: row-level security applies, and an atom the caller
-- cannot read is reported exactly like a missing one (no way to tell them apart).
SET LOCAL ROLE hart_owner;

-- Deepest tree accepted. Content addressing makes honest trees acyclic, but positions are not
-- hashes: a forged composite passing through its own point would loop forever without it.
CREATE FUNCTION hart_max_depth() RETURNS int LANGUAGE sql IMMUTABLE PARALLEL SAFE AS 'SELECT 64';

-- force_generic_plan: planning the walk over 256 partitions takes ~50-100 ms; a generic plan
-- (pruned at run time) is made once per session and reused. jit = off: the plan's cost over
-- 256 partitions crosses jit_above_cost, and compiling it takes ~0.5 s per call for a
-- query that runs in 0.2 s.
CREATE FUNCTION hart_reconstruct(root_h_xy bigint, root_h_yz bigint, root_h_zm bigint)
RETURNS bytea LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
SET plan_cache_mode = force_generic_plan SET jit = off AS $$
DECLARE
    result    bytea;
    n_missing bigint;
    missing   text;
    max_level int;
BEGIN
    WITH RECURSIVE walk (depth, path, value, geom, modality, miss) AS (
        SELECT 0, ''::bytea, a.value, a.geom, a.modality, NULL::text
        FROM atoms a
        WHERE a.h_xy = root_h_xy AND a.h_yz = root_h_yz AND a.h_zm = root_h_zm
      UNION ALL
        SELECT w.depth + 1, w.path || int4send(v.path[1]), c.value, c.geom, c.modality,
               CASE WHEN c.hit IS NULL THEN ST_AsText(v.geom) END
        FROM walk w
        CROSS JOIN LATERAL ST_DumpPoints(ST_GeometryN(w.geom, 2)) AS v
        -- A correlated probe, so that the plan is an index lookup per vertex whatever the
        -- statistics say (a join here may be planned as a scan of every partition).
        LEFT JOIN LATERAL (
            SELECT c.value, c.geom, c.modality, true AS hit
            FROM atoms c
            WHERE c.h_xy = hart_xy_of_point(w.modality, v.geom) AND c.pt = v.geom
            LIMIT 1) c ON true
        WHERE w.miss IS NULL AND w.value IS NULL AND w.depth < hart_max_depth()
    )
    SELECT string_agg(value, ''::bytea ORDER BY path) FILTER (WHERE value IS NOT NULL),
           count(miss),
           min(miss),
           max(depth)
    INTO result, n_missing, missing, max_level
    FROM walk;

    IF max_level IS NULL THEN
        RAISE EXCEPTION 'hart_reconstruct: no atom (%, %, %), or it is not visible to %',
            root_h_xy, root_h_yz, root_h_zm, current_user
            USING ERRCODE = 'no_data_found';
    END IF;
    IF n_missing > 0 THEN
        RAISE EXCEPTION 'hart_reconstruct: % atom(s) under (%, %, %) are missing or not visible to %, e.g. at %',
            n_missing, root_h_xy, root_h_yz, root_h_zm, current_user, missing
            USING ERRCODE = 'no_data_found',
                  HINT = 'run fsck; a missing child means the store is damaged or access is incomplete';
    END IF;
    IF max_level >= hart_max_depth() THEN
        RAISE EXCEPTION 'hart_reconstruct: tree under (%, %, %) is deeper than % levels (a cycle?)',
            root_h_xy, root_h_yz, root_h_zm, hart_max_depth()
            USING ERRCODE = 'data_corrupted';
    END IF;
    RETURN coalesce(result, ''::bytea);
END
$$;

COMMENT ON FUNCTION hart_reconstruct(bigint, bigint, bigint) IS
    'The bytes under an atom: its leaves'' values in tree order, found through the LINESTRING vertices.';

-- By content hash (probes every partition's content_hash index: use the key when known).
CREATE FUNCTION hart_reconstruct(content_hash bytea)
RETURNS bytea LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE AS $$
DECLARE
    k hart_key;
BEGIN
    SELECT a.h_xy, a.h_yz, a.h_zm INTO k
    FROM atoms a WHERE a.content_hash = hart_reconstruct.content_hash;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'hart_reconstruct: no atom with content hash %, or it is not visible to %',
            encode(content_hash, 'hex'), current_user
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN hart_reconstruct(k.h_xy, k.h_yz, k.h_zm);
END
$$;

-- An object's bytes, by its id in `objects`.
CREATE FUNCTION hart_object_bytes(object_id bigint)
RETURNS bytea LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE AS $$
DECLARE
    o objects;
BEGIN
    SELECT * INTO o FROM objects WHERE id = object_id AND deleted_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'hart_object_bytes: no live object %, or it is not visible to %',
            object_id, current_user
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN hart_reconstruct(o.root_h_xy, o.root_h_yz, o.root_h_zm);
END
$$;
