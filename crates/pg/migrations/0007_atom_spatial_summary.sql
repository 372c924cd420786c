-- 0007: atom_spatial_summary, a materialized view of where atoms are, refreshed concurrently.
--
-- One row per (modality, kind, access, Hilbert cell), the cell being the top 8 bits of the
-- 56-bit (x, y) Hilbert index (256 cells per modality, each a compact region of the plane):
-- counts, value bytes, references, the 4-D bounding box and centroid of the atoms' points.
--
-- Materialized views have no row-level security: the view aggregates every atom, so only
-- hart_admin reads it whole; readers get atom_spatial_summary_public (public atoms only).
--
-- Refresh: hart_refresh_spatial_summary() (REFRESH ... CONCURRENTLY, which needs the unique
-- index below), scheduled by pg_cron every 5 minutes where pg_cron is installed in this
-- database, otherwise called by the application on its own schedule.
SET LOCAL ROLE hart_owner;

CREATE MATERIALIZED VIEW atom_spatial_summary AS
SELECT modality,
       (value IS NULL)                             AS is_composite,
       is_public,
       ((h_xy >> 48) & 255)::smallint              AS cell,
       count(*)                                    AS atoms,
       coalesce(sum(octet_length(value)), 0)::bigint AS value_bytes,
       sum(ref_count)::bigint                      AS refs,
       min(ST_X(pt)) AS min_x, max(ST_X(pt)) AS max_x,
       min(ST_Y(pt)) AS min_y, max(ST_Y(pt)) AS max_y,
       min(ST_Z(pt)) AS min_z, max(ST_Z(pt)) AS max_z,
       min(ST_M(pt)) AS min_m, max(ST_M(pt)) AS max_m,
       ST_MakePoint(avg(ST_X(pt)), avg(ST_Y(pt)), avg(ST_Z(pt)), avg(ST_M(pt))) AS centroid,
       max(created_at)                             AS newest
FROM atoms
GROUP BY 1, 2, 3, 4
WITH DATA;

COMMENT ON MATERIALIZED VIEW atom_spatial_summary IS
    'Atoms per (modality, leaf/composite, public, Hilbert cell of the top 8 index bits); refresh with hart_refresh_spatial_summary().';

-- Required by REFRESH MATERIALIZED VIEW CONCURRENTLY.
CREATE UNIQUE INDEX atom_spatial_summary_key
    ON atom_spatial_summary (modality, is_composite, is_public, cell);

CREATE VIEW atom_spatial_summary_public AS
    SELECT * FROM atom_spatial_summary WHERE is_public;

GRANT SELECT ON atom_spatial_summary TO hart_admin;
GRANT SELECT ON atom_spatial_summary_public TO hart_reader;

-- Runs as the view's owner (only an owner may refresh). Concurrent refresh keeps the view
-- readable meanwhile; it needs a populated view, which WITH DATA above guarantees.
CREATE FUNCTION hart_refresh_spatial_summary() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    REFRESH MATERIALIZED VIEW CONCURRENTLY public.atom_spatial_summary;
END
$$;
REVOKE ALL ON FUNCTION hart_refresh_spatial_summary() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hart_refresh_spatial_summary() TO hart_writer;

RESET ROLE;
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_cron') THEN
        PERFORM cron.schedule('hart_refresh_spatial_summary', '*/5 * * * *',
                              'SELECT public.hart_refresh_spatial_summary()');
    END IF;
END
$$;
