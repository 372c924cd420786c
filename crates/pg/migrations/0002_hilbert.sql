-- 0002: the Hilbert key in SQL, identical to hart-core (crates/core/src/hilbert.rs, key.rs).
--
-- h_xy = modality << 56 | hilbert(x, y), h_yz = hilbert(y, z), h_zm = hilbert(z, m), for
-- 28-bit coordinates (docs/FORMAT.md). The database needs the curve to check that a stored
-- key matches its atom's own point (atoms_key_matches_point) and to go from a composite's
-- vertices to its children's keys (hart_reconstruct). Equality with the Rust values is
-- tested in crates/pg/tests/hilbert.rs against hart_core::HilbertKey on random positions.
--
-- hart_hilbert_encode is the branch-free, bit-parallel form of the curve (prefix scans over
-- the 28 bit levels, after "2D Hilbert curves in O(1)", threadlocalmutex.com): about 2 us
-- per call in PL/pgSQL, 4x faster than the bit-by-bit loop. hart_hilbert_decode is the plain
-- bit-by-bit inverse (used only for inspection, never on a hot path).
SET LOCAL ROLE hart_owner;

CREATE FUNCTION hart_hilbert_encode(x bigint, y bigint) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    m  CONSTANT bigint := 268435455;            -- 2^28 - 1
    a  bigint := x # y;
    b  bigint := m # (x # y);
    c  bigint := m # (x | y);
    d  bigint := x & (y # m);
    aa bigint; bb bigint; cc bigint; dd bigint;
    i0 bigint; i1 bigint;
    sh int;
BEGIN
    IF x < 0 OR x > m OR y < 0 OR y > m THEN
        RAISE EXCEPTION 'hart_hilbert_encode: coordinate out of range 0..2^28-1: (%, %)', x, y
            USING ERRCODE = 'numeric_value_out_of_range';
    END IF;
    aa := a | (b >> 1);
    bb := (a >> 1) # a;
    cc := ((c >> 1) # (b & (d >> 1))) # c;
    dd := ((a & (c >> 1)) # (d >> 1)) # d;
    FOREACH sh IN ARRAY '{2,4,8}'::int[] LOOP
        a := aa; b := bb; c := cc; d := dd;
        aa := (a & (a >> sh)) # (b & (b >> sh));
        bb := (a & (b >> sh)) # (b & ((a # b) >> sh));
        cc := cc # ((a & (c >> sh)) # (b & (d >> sh)));
        dd := dd # ((b & (c >> sh)) # ((a # b) & (d >> sh)));
    END LOOP;
    cc := cc # ((aa & (cc >> 16)) # (bb & (dd >> 16)));
    dd := dd # ((bb & (cc >> 16)) # ((aa # bb) & (dd >> 16)));
    a := cc # (cc >> 1);
    b := dd # (dd >> 1);
    i0 := x # y;
    i1 := b | (m # (i0 | a));
    -- Interleave: bit k of i1 goes to bit 2k+1 of the index, bit k of i0 to bit 2k.
    i0 := (i0 | (i0 << 16)) & x'0000FFFF0000FFFF'::bigint;
    i0 := (i0 | (i0 << 8))  & x'00FF00FF00FF00FF'::bigint;
    i0 := (i0 | (i0 << 4))  & x'0F0F0F0F0F0F0F0F'::bigint;
    i0 := (i0 | (i0 << 2))  & x'3333333333333333'::bigint;
    i0 := (i0 | (i0 << 1))  & x'5555555555555555'::bigint;
    i1 := (i1 | (i1 << 16)) & x'0000FFFF0000FFFF'::bigint;
    i1 := (i1 | (i1 << 8))  & x'00FF00FF00FF00FF'::bigint;
    i1 := (i1 | (i1 << 4))  & x'0F0F0F0F0F0F0F0F'::bigint;
    i1 := (i1 | (i1 << 2))  & x'3333333333333333'::bigint;
    i1 := (i1 | (i1 << 1))  & x'5555555555555555'::bigint;
    RETURN (i1 << 1) | i0;
END
$$;

COMMENT ON FUNCTION hart_hilbert_encode(bigint, bigint) IS
    '2-D Hilbert index (56 bits) of 28-bit (x, y); equals hart_core::hilbert::encode.';

CREATE FUNCTION hart_hilbert_decode(d bigint, OUT x bigint, OUT y bigint)
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    s  int := 0;    -- bit 0: x/y swapped, bit 1: both complemented (see hilbert.rs)
    q  int; rx int; ry int; bx int; yb int; t int;
    lv int;
BEGIN
    IF d < 0 OR d >= (1::bigint << 56) THEN
        RAISE EXCEPTION 'hart_hilbert_decode: index out of range 0..2^56-1: %', d
            USING ERRCODE = 'numeric_value_out_of_range';
    END IF;
    x := 0; y := 0;
    FOR lv IN REVERSE 27..0 LOOP
        q  := ((d >> (2 * lv)) & 3)::int;
        rx := q >> 1;
        ry := (q # rx) & 1;
        bx := rx; yb := ry;
        IF s & 1 = 1 THEN t := bx; bx := yb; yb := t; END IF;
        IF s & 2 = 2 THEN bx := bx # 1; yb := yb # 1; END IF;
        x := x | (bx::bigint << lv);
        y := y | (yb::bigint << lv);
        IF ry = 0 THEN
            s := s # 1 # (CASE WHEN rx = 1 THEN 2 ELSE 0 END);
        END IF;
    END LOOP;
END
$$;

COMMENT ON FUNCTION hart_hilbert_decode(bigint) IS
    'Inverse of hart_hilbert_encode: the (x, y) of a 56-bit Hilbert index.';

-- The key of a position, as a row (h_xy, h_yz, h_zm).
CREATE TYPE hart_key AS (h_xy bigint, h_yz bigint, h_zm bigint);

CREATE FUNCTION hart_key(modality smallint, x bigint, y bigint, z bigint, m bigint)
RETURNS hart_key LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ROW((modality::bigint << 56) | hart_hilbert_encode(x, y),
               hart_hilbert_encode(y, z),
               hart_hilbert_encode(z, m))::hart_key
$$;

-- The key of a POINT ZM (an atom's own point or a composite's vertex). NULL when the point's
-- coordinates are not whole numbers in 0..2^28-1: no atom can sit there.
CREATE FUNCTION hart_key_of_point(modality smallint, p geometry)
RETURNS hart_key LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    cx float8 := ST_X(p);
    cy float8 := ST_Y(p);
    cz float8 := ST_Z(p);
    cm float8 := ST_M(p);
BEGIN
    IF cz IS NULL OR cm IS NULL
       OR cx <> trunc(cx) OR cy <> trunc(cy) OR cz <> trunc(cz) OR cm <> trunc(cm)
       OR least(cx, cy, cz, cm) < 0 OR greatest(cx, cy, cz, cm) > 268435455 THEN
        RETURN NULL;
    END IF;
    RETURN hart_key(modality, cx::bigint, cy::bigint, cz::bigint, cm::bigint);
END
$$;

-- Just h_xy of a point: the partition and the leading primary-key column. With the point
-- itself (atoms.pt = vertex) it finds an atom by one index probe for a third of the cost of
-- the whole key: hart_reconstruct and hart_merge_stage look children up this way. NULL when
-- x or y is not a whole number in 0..2^28-1 (z and m are checked by the point comparison).
CREATE FUNCTION hart_xy_of_point(modality smallint, p geometry)
RETURNS bigint LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    cx float8 := ST_X(p);
    cy float8 := ST_Y(p);
BEGIN
    IF cx <> trunc(cx) OR cy <> trunc(cy) OR least(cx, cy) < 0 OR greatest(cx, cy) > 268435455 THEN
        RETURN NULL;
    END IF;
    RETURN (modality::bigint << 56) | hart_hilbert_encode(cx::bigint, cy::bigint);
END
$$;

-- True when (h_xy, h_yz, h_zm) is the key of `modality` at point `p`; false otherwise (never
-- NULL for non-NULL input, so that a CHECK constraint built on it cannot be passed by NULL).
-- One function, no nested SQL calls: it runs for every inserted atom.
CREATE FUNCTION hart_key_matches(h_xy bigint, h_yz bigint, h_zm bigint, modality smallint, p geometry)
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
    RETURN h_xy = ((modality::bigint << 56) | hart_hilbert_encode(cx::bigint, cy::bigint))
       AND h_yz = hart_hilbert_encode(cy::bigint, cz::bigint)
       AND h_zm = hart_hilbert_encode(cz::bigint, cm::bigint);
END
$$;

-- Decode a key: modality and position, or NULL when the three indices disagree on the
-- shared coordinates (not a key of any position).
CREATE FUNCTION hart_position(h_xy bigint, h_yz bigint, h_zm bigint,
                              OUT modality smallint, OUT x bigint, OUT y bigint,
                              OUT z bigint, OUT m bigint)
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    y2 bigint; z2 bigint;
BEGIN
    IF h_xy < 0 OR h_yz < 0 OR h_zm < 0 OR h_yz >= (1::bigint << 56) OR h_zm >= (1::bigint << 56) THEN
        RETURN;
    END IF;
    SELECT d.x, d.y INTO x, y FROM hart_hilbert_decode(h_xy & ((1::bigint << 56) - 1)) d;
    SELECT d.x, d.y INTO y2, z FROM hart_hilbert_decode(h_yz) d;
    SELECT d.x, d.y INTO z2, m FROM hart_hilbert_decode(h_zm) d;
    IF y2 <> y OR z2 <> z THEN
        x := NULL; y := NULL; z := NULL; m := NULL;
        RETURN;
    END IF;
    modality := (h_xy >> 56)::smallint;
END
$$;
