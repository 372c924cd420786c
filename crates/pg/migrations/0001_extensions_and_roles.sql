-- 0001: extensions and the roles the schema is written for.
--
-- Roles are cluster-wide, so several databases of one cluster (a fresh database per test,
-- several stores on one server) share them: each is created only when missing, and a
-- concurrent creation by another database's migration is not an error.
--
--   hart_owner   NOLOGIN, BYPASSRLS. Owns every table, view and function of the schema, and
--                runs the few SECURITY DEFINER functions (merge, refresh). Nobody logs in as it.
--   hart_reader  NOLOGIN group. Reads what row-level security lets it read.
--   hart_writer  NOLOGIN group, member of hart_reader. Ingests, annotates, deletes its own.
--   hart_admin   NOLOGIN, BYPASSRLS, member of hart_writer. Operators: gc, fsck, stats over
--                everything. BYPASSRLS is not inherited: an operator must SET ROLE hart_admin.
--
-- Principals are real LOGIN roles granted hart_reader or hart_writer (docs/SECURITY.md).

CREATE EXTENSION IF NOT EXISTS postgis;

DO $$
BEGIN
    -- Statement statistics, when the server can load them (shared_preload_libraries).
    IF EXISTS (SELECT FROM pg_available_extensions WHERE name = 'pg_stat_statements') THEN
        CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
    END IF;
END
$$;

DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT * FROM (VALUES
            ('hart_owner',  'NOLOGIN BYPASSRLS'),
            ('hart_reader', 'NOLOGIN'),
            ('hart_writer', 'NOLOGIN'),
            ('hart_admin',  'NOLOGIN BYPASSRLS')
        ) AS t(name, attrs)
    LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r.name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I %s', r.name, r.attrs);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL; -- created meanwhile by a migration of another database
            END;
        END IF;
    END LOOP;

    FOR r IN
        SELECT * FROM (VALUES
            ('hart_reader', 'hart_writer'),
            ('hart_writer', 'hart_admin')
        ) AS t(grp, member)
    LOOP
        IF NOT pg_has_role(r.member, r.grp, 'MEMBER') THEN
            BEGIN
                EXECUTE format('GRANT %I TO %I', r.grp, r.member);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;

-- Schema objects are created by hart_owner (later migrations SET LOCAL ROLE hart_owner).
GRANT CREATE, USAGE ON SCHEMA public TO hart_owner;
GRANT USAGE ON SCHEMA public TO hart_reader;
