-- 0011: the application's schedule for atom_spatial_summary where pg_cron is not installed
-- (0007 schedules it with pg_cron where it is).
--
-- hart_refresh_spatial_summary_due(every) refreshes the view (concurrently) when pg_cron does
-- not, and the last refresh is older than `every`; it returns whether it did. The backend calls
-- it at the end of every command that wrote atoms (`PgStore::flush`), so the summary is at most
-- `every` behind the last write that happened after it. Concurrent callers: one refreshes,
-- the others return at once (an advisory lock).
SET LOCAL ROLE hart_owner;

CREATE TABLE hart_maintenance (
    task     text        PRIMARY KEY,
    last_run timestamptz NOT NULL
);
COMMENT ON TABLE hart_maintenance IS 'When periodic maintenance tasks last ran (hart_refresh_spatial_summary_due).';
GRANT SELECT ON hart_maintenance TO hart_reader;

CREATE FUNCTION hart_refresh_spatial_summary_due(every interval DEFAULT '5 minutes') RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_cron') THEN
        RETURN false;  -- scheduled by pg_cron (0007)
    END IF;
    IF NOT pg_try_advisory_xact_lock(4847253) THEN
        RETURN false;  -- another session is refreshing
    END IF;
    IF EXISTS (SELECT FROM hart_maintenance m
               WHERE m.task = 'atom_spatial_summary' AND m.last_run > clock_timestamp() - every) THEN
        RETURN false;
    END IF;
    PERFORM hart_refresh_spatial_summary();
    INSERT INTO hart_maintenance (task, last_run) VALUES ('atom_spatial_summary', clock_timestamp())
    ON CONFLICT (task) DO UPDATE SET last_run = excluded.last_run;
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION hart_refresh_spatial_summary_due(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION hart_refresh_spatial_summary_due(interval) TO hart_writer;
