-- 003_roles_and_retention.sql — the read-only analyst role, and expiry of old rows.

------------------------------------------------------------------------------------------------------
-- streampulse_analyst: a NOLOGIN group role that can read everything in this schema and change nothing.
-- People log in as their own roles and inherit it:  CREATE ROLE alice LOGIN IN ROLE streampulse_analyst;
--
-- Roles are cluster-wide, schemas are not: the role is created once (only if missing, so the migration
-- needs CREATEROLE only the first time — a DBA may pre-create it instead), and the grants are made for
-- whatever schema search_path points at, found with current_schema() and spliced in with format(%I)
-- because GRANT does not take the schema from search_path.
------------------------------------------------------------------------------------------------------
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'streampulse_analyst') THEN
        BEGIN
            CREATE ROLE streampulse_analyst NOLOGIN;
        EXCEPTION
            -- Another schema's migration created it between our check and our CREATE.
            WHEN duplicate_object OR unique_violation THEN NULL;
            -- Fail loudly rather than skip: a skipped grant would never be retried, since this
            -- migration is recorded as applied.
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'role streampulse_analyst does not exist and % may not create it',
                                current_user
                    USING HINT = 'Have an administrator run: CREATE ROLE streampulse_analyst NOLOGIN;'
                                 ' then start again.';
        END;
    END IF;

    EXECUTE format('GRANT USAGE ON SCHEMA %I TO streampulse_analyst', current_schema());
    -- "ALL TABLES" includes views (and schema_migrations, which is harmless to read).
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO streampulse_analyst', current_schema());
    -- Tables and views created later in this schema by the role running the migrations are readable
    -- too, so a future migration does not have to remember the grant.
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO streampulse_analyst',
                   current_schema());
END
$$;

------------------------------------------------------------------------------------------------------
-- expire_old_rows(keep, keep_events): delete what is older than now() - keep, return how many rows went.
--
--   * per-window tables (content_stats, region_health, device_stats, error_stats, window_totals,
--     trending) and alerts: only FINAL rows whose window ended before the cutoff. An open row must never
--     be deleted: the sink adds deltas to it and rebuilds open windows from it at start-up, so deleting
--     it would silently lose counts. Final rows never change again, so removing them is safe.
--   * late_events: by age alone — late events for a window keep arriving after it is final, and a
--     deleted late row simply starts again from the next late event.
--   * event_log: trimmed to the newest keep_events rows (by received_at), whatever their age.
--   * dead_letters and sink_progress are never touched (sink_progress is what makes restarts exact).
--
-- It uses the wall clock (now()), so after a replay of old data, use a keep long enough to cover it.
-- SET search_path FROM CURRENT pins the schema in effect when the migration ran, so the function deletes
-- from its own schema's tables whatever the caller's search_path is. It runs with the caller's
-- privileges; EXECUTE is revoked from PUBLIC so only the owner (or roles granted it) can call it.
------------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION expire_old_rows(keep interval, keep_events integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    cutoff  timestamptz := now() - keep;
    n       bigint;
    total   bigint := 0;
BEGIN
    IF keep IS NULL OR keep < interval '0' THEN
        RAISE EXCEPTION 'expire_old_rows: keep must be a non-negative interval, got %', keep;
    END IF;
    IF keep_events IS NULL OR keep_events < 0 THEN
        RAISE EXCEPTION 'expire_old_rows: keep_events must be >= 0, got %', keep_events;
    END IF;

    DELETE FROM content_stats WHERE is_final AND window_end < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM region_health WHERE is_final AND window_end < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM device_stats  WHERE is_final AND window_end < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM error_stats   WHERE is_final AND window_end < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM window_totals WHERE is_final AND window_end < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM trending      WHERE is_final AND window_end < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM alerts        WHERE is_final AND window_end < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;
    DELETE FROM late_events   WHERE window_end < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;

    -- Keep the newest keep_events rows; ties on received_at (one sink transaction shares now()) are
    -- broken by Kafka coordinates so exactly keep_events rows survive.
    DELETE FROM event_log
    WHERE ctid IN (
        SELECT ctid FROM event_log
        ORDER BY received_at DESC, topic DESC, partition DESC, kafka_offset DESC
        OFFSET keep_events
    );
    GET DIAGNOSTICS n = ROW_COUNT; total := total + n;

    RETURN total;
END
$$;

COMMENT ON FUNCTION expire_old_rows(interval, integer) IS
    'Delete final per-window rows, final alerts and late_events older than now() - keep, trim event_log '
    'to the newest keep_events rows; returns the number of rows deleted. See sql/README.md.';

REVOKE EXECUTE ON FUNCTION expire_old_rows(interval, integer) FROM PUBLIC;
