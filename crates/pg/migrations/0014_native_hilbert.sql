-- 0014: the Hilbert key in C when the hart_native extension is installed (decision 0014).
--
-- The key check on every inserted atom (atoms_validate_inserted: three Hilbert encodings in
-- PL/pgSQL, ~8 us) was a quarter of a bulk load's server time. crates/pg/native holds the
-- same curve in C (the optional extension hart_native, ~0.1 us). The three functions the
-- merge, the key check and hart_reconstruct call become SQL wrappers, inlined by the planner,
-- over either the C functions or the PL/pgSQL ones of 0002, which stay as *_plpgsql:
--   hart_hilbert_encode(x, y)            -> hart_native_hilbert_encode | hart_hilbert_encode_plpgsql
--   hart_key_matches(keys, modality, p)  -> hart_native_key_matches    | hart_key_matches_plpgsql
--   hart_xy_of_point(modality, p)        -> hart_native_xy_of_point    | hart_xy_of_point_plpgsql
-- Both give the same answers (crates/pg/tests/hilbert.rs checks both against hart_core).
-- hart_adopt_native() chooses; this migration calls it, and so does every `hart db migrate`,
-- so a database picks up the extension when it is installed later.
SET LOCAL ROLE hart_owner;

ALTER FUNCTION hart_hilbert_encode(bigint, bigint) RENAME TO hart_hilbert_encode_plpgsql;
ALTER FUNCTION hart_key_matches(bigint, bigint, bigint, smallint, geometry) RENAME TO hart_key_matches_plpgsql;
ALTER FUNCTION hart_xy_of_point(smallint, geometry) RENAME TO hart_xy_of_point_plpgsql;

-- The PL/pgSQL forms, restated to call the PL/pgSQL encoder (0002's bodies called it by the
-- name the wrapper now has): the fallback stays PL/pgSQL throughout, and comparable.
CREATE OR REPLACE FUNCTION hart_xy_of_point_plpgsql(modality smallint, p geometry)
RETURNS bigint LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    cx float8 := ST_X(p);
    cy float8 := ST_Y(p);
BEGIN
    IF cx <> trunc(cx) OR cy <> trunc(cy) OR least(cx, cy) < 0 OR greatest(cx, cy) > 268435455 THEN
        RETURN NULL;
    END IF;
    RETURN (modality::bigint << 56) | hart_hilbert_encode_plpgsql(cx::bigint, cy::bigint);
END
$$;

CREATE OR REPLACE FUNCTION hart_key_matches_plpgsql(h_xy bigint, h_yz bigint, h_zm bigint, modality smallint, p geometry)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    cx float8 := ST_X(p);
    cy float8 := ST_Y(p);
    cz float8 := ST_Z(p);
    cm float8 := ST_M(p);
BEGIN
    IF cz IS NULL OR cm IS NULL
       OR cx <> trunc(cx) OR cy <> trunc(cy) OR cz <> trunc(cz) OR cm <> trunc(cm)
       OR least(cx, cy, cz, cm) < 0 OR greatest(cx, cy, cz, cm) > 268435455 THEN
        RETURN false;
    END IF;
    RETURN h_xy = ((modality::bigint << 56) | hart_hilbert_encode_plpgsql(cx::bigint, cy::bigint))
       AND h_yz = hart_hilbert_encode_plpgsql(cy::bigint, cz::bigint)
       AND h_zm = hart_hilbert_encode_plpgsql(cz::bigint, cm::bigint);
END
$$;

-- Point the three names at the C functions when hart_native is installed in this database
-- (creating it first when it is available on the server and the caller may: a superuser,
-- as migrations run), at the PL/pgSQL ones otherwise or when prefer_native is false (tests
-- of the fallback). Returns whether C is in use.
-- SECURITY INVOKER: only a role that may create C extensions and replace these functions
-- (their owner, or a superuser) can run it to any effect.
CREATE FUNCTION hart_adopt_native(prefer_native boolean DEFAULT true) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $adopt$
DECLARE
    native boolean;
BEGIN
    IF prefer_native AND NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'hart_native')
       AND EXISTS (SELECT FROM pg_available_extensions WHERE name = 'hart_native')
       AND (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        CREATE EXTENSION hart_native SCHEMA public;
    END IF;
    native := prefer_native AND EXISTS (SELECT FROM pg_extension WHERE extname = 'hart_native');
    -- Already so: nothing to replace (replacing would invalidate every session's plans).
    IF hart_hilbert_native() IS NOT DISTINCT FROM native THEN
        RETURN native;
    END IF;
    -- Not STRICT where the body calls a non-strict function (hart_native_key_matches answers
    -- false for NULL coordinates): the planner only inlines a STRICT SQL function whose body
    -- is strict, and an inlined wrapper costs nothing.
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION public.hart_hilbert_encode(x bigint, y bigint)
        RETURNS bigint LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        AS 'SELECT public.%s(x, y)'$f$,
        CASE WHEN native THEN 'hart_native_hilbert_encode' ELSE 'hart_hilbert_encode_plpgsql' END);
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION public.hart_xy_of_point(modality smallint, p geometry)
        RETURNS bigint LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        AS %L$f$,
        CASE WHEN native THEN 'SELECT public.hart_native_xy_of_point(modality, public.ST_X(p), public.ST_Y(p))'
             ELSE 'SELECT public.hart_xy_of_point_plpgsql(modality, p)' END);
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION public.hart_key_matches(h_xy bigint, h_yz bigint, h_zm bigint, modality smallint, p geometry)
        RETURNS boolean LANGUAGE sql IMMUTABLE %s PARALLEL SAFE
        AS %L$f$,
        CASE WHEN native THEN 'CALLED ON NULL INPUT' ELSE 'STRICT' END,
        CASE WHEN native THEN 'SELECT public.hart_native_key_matches(h_xy, h_yz, h_zm, modality, '
                              'public.ST_X(p), public.ST_Y(p), public.ST_Z(p), public.ST_M(p))'
             ELSE 'SELECT public.hart_key_matches_plpgsql(h_xy, h_yz, h_zm, modality, p)' END);
    COMMENT ON FUNCTION public.hart_hilbert_encode(bigint, bigint) IS
        '2-D Hilbert index (56 bits) of 28-bit (x, y); equals hart_core::hilbert::encode. C (hart_native) or PL/pgSQL: see hart_hilbert_native().';
    RETURN native;
END
$adopt$;

-- Whether the key functions run in C (hart_native) in this database.
CREATE FUNCTION hart_hilbert_native() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, public AS $$
    SELECT p.prosrc LIKE '%hart_native_key_matches%'
    FROM pg_proc p
    WHERE p.oid = to_regprocedure('public.hart_key_matches(bigint, bigint, bigint, smallint, geometry)')
$$;

REVOKE ALL ON FUNCTION hart_adopt_native(boolean) FROM PUBLIC;

RESET ROLE;
SELECT hart_adopt_native();
