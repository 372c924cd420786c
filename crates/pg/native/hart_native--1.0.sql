-- hart_native 1.0: see hart_native.c. Migration 0014 calls these through hart_hilbert_encode,
-- hart_key_matches and hart_xy_of_point.
\echo Use "CREATE EXTENSION hart_native" to load this file. \quit

CREATE FUNCTION hart_native_hilbert_encode(x bigint, y bigint) RETURNS bigint
    AS 'MODULE_PATHNAME', 'hart_native_hilbert_encode'
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION hart_native_key_matches(h_xy bigint, h_yz bigint, h_zm bigint, modality smallint,
                                        x float8, y float8, z float8, m float8) RETURNS boolean
    AS 'MODULE_PATHNAME', 'hart_native_key_matches'
    LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION hart_native_xy_of_point(modality smallint, x float8, y float8) RETURNS bigint
    AS 'MODULE_PATHNAME', 'hart_native_xy_of_point'
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION hart_native_line_keys(modality smallint, line bytea,
                                      OUT h_xy bigint, OUT h_yz bigint, OUT h_zm bigint)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'hart_native_line_keys'
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE ROWS 16;
