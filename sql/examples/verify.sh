#!/usr/bin/env bash
# Check the migrations for real, against a scratch database:
#
#   1. apply sql/NNN_*.sql the way `streampulse migrate` does (schema created first, search_path set to
#      it, one transaction per file), then apply them all again — both must succeed;
#   2. load examples/sample_data.sql and check the generated columns, the health thresholds at their
#      exact boundaries, and the sink's additive upsert;
#   3. as a login role that is only IN ROLE streampulse_analyst: read every view, run every example
#      query of sql/README.md, and fail to write;
#   4. run expire_old_rows() and compare what it deleted with what it should have.
#
#   sql/examples/verify.sh
#
# Settings (environment):
#   PG_URL     a superuser URL without the database  (default postgres://postgres@127.0.0.1:5432)
#   VERIFY_DB  the scratch database, created and dropped (default streampulse_sql_verify)
#
# Leaves nothing behind: the scratch database, its login role, and streampulse_analyst if this script
# created it, are dropped on exit.
set -euo pipefail

PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
VERIFY_DB=${VERIFY_DB:-streampulse_sql_verify}
SQL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCHEMA=sp_verify
ANALYST=sp_verify_alice

admin() { psql -X -q -v ON_ERROR_STOP=1 "$PG_URL/postgres" "$@"; }
db()    { psql -X -q -v ON_ERROR_STOP=1 "$PG_URL/$VERIFY_DB" "$@"; }
say()   { printf '\n== %s\n' "$*"; }

had_analyst=$(admin -At -c "SELECT count(*) FROM pg_roles WHERE rolname = 'streampulse_analyst'")

cleanup() {
    admin -c "DROP DATABASE IF EXISTS $VERIFY_DB" -c "DROP ROLE IF EXISTS $ANALYST" || true
    if [ "$had_analyst" = 0 ]; then
        admin -c "DROP ROLE IF EXISTS streampulse_analyst" || true
    fi
}
trap cleanup EXIT

admin -c "DROP DATABASE IF EXISTS $VERIFY_DB" -c "CREATE DATABASE $VERIFY_DB"

# What the app does: CREATE SCHEMA IF NOT EXISTS, SET search_path, then each file in a transaction.
apply_all() {
    local schema=$1
    db -c "CREATE SCHEMA IF NOT EXISTS $schema"
    for f in "$SQL_DIR"/[0-9][0-9][0-9]_*.sql; do
        echo "   $schema <- $(basename "$f")"
        db -1 -c "SET search_path TO $schema" -f "$f"
    done
}

say "apply twice into $SCHEMA, once into a second schema"
apply_all $SCHEMA
apply_all $SCHEMA
apply_all sp_verify_replay
leaked=$(db -At -c "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = 'public'")
[ "$leaked" = 0 ] || { echo "objects were created in public" >&2; exit 1; }

say "sample data"
db -c "SET search_path TO $SCHEMA" -f "$SQL_DIR/examples/sample_data.sql"

say "generated columns, health thresholds, additive upsert"
db <<SQL
SET search_path TO $SCHEMA;
BEGIN;
INSERT INTO region_health (window_start, window_end, region, downloads, successful, speed_milli) VALUES
    ('2000-01-01 00:00Z', '2000-01-01 00:01Z', 'at-95',    100,  95, 95 * 20500),
    ('2000-01-01 00:00Z', '2000-01-01 00:01Z', 'at-19/20',  20,  19, 0),
    ('2000-01-01 00:00Z', '2000-01-01 00:01Z', 'below-95', 1000, 949, 0),
    ('2000-01-01 00:00Z', '2000-01-01 00:01Z', 'at-90',    100,  90, 0),
    ('2000-01-01 00:00Z', '2000-01-01 00:01Z', 'below-90', 100,  89, 0),
    ('2000-01-01 00:00Z', '2000-01-01 00:01Z', 'empty',      0,   0, 0);
DO \$\$
DECLARE r record;
BEGIN
    FOR r IN SELECT region, health_status, success_rate, avg_speed_mbps FROM region_health
             WHERE window_start = '2000-01-01 00:00Z' LOOP
        ASSERT r.health_status IS NOT DISTINCT FROM CASE r.region
            WHEN 'at-95' THEN 'healthy' WHEN 'at-19/20' THEN 'healthy' WHEN 'below-95' THEN 'degraded'
            WHEN 'at-90' THEN 'degraded' WHEN 'below-90' THEN 'critical' END,
            format('%s: health_status %s', r.region, r.health_status);
    END LOOP;
    ASSERT (SELECT avg_speed_mbps FROM region_health WHERE region = 'at-95') = 20.5;
    ASSERT (SELECT success_rate IS NULL AND avg_speed_mbps IS NULL AND total_size_gb = 0
            FROM region_health WHERE region = 'empty');
END
\$\$;
ROLLBACK;

-- The sink's statement: deltas are added, is_final only ever goes false -> true.
BEGIN;
PREPARE upsert(bigint, bigint, bigint, boolean) AS
INSERT INTO content_stats AS t (window_start, window_end, content_id, title,
                                downloads, successful, speed_milli, is_final)
VALUES ('2000-01-01 00:00Z', '2000-01-01 00:01Z', 'x', 'X', \$1, \$2, \$3, \$4)
ON CONFLICT (window_start, content_id, title) DO UPDATE SET
    downloads   = t.downloads   + excluded.downloads,
    successful  = t.successful  + excluded.successful,
    speed_milli = t.speed_milli + excluded.speed_milli,
    is_final    = t.is_final OR excluded.is_final,
    updated_at  = now();
EXECUTE upsert(3, 2, 61000, false);
EXECUTE upsert(1, 1, 29000, true);
EXECUTE upsert(0, 0, 0, false);
DO \$\$
BEGIN
    ASSERT (SELECT (downloads, successful, success_rate, avg_speed_mbps, is_final)
                   = (4::bigint, 3::bigint, 0.75::float8, 30::float8, true)
            FROM content_stats WHERE content_id = 'x');
    BEGIN
        INSERT INTO content_stats (window_start, window_end, content_id, title, success_rate)
        VALUES ('2000-01-01 00:00Z', '2000-01-01 00:01Z', 'y', 'Y', 0.5);
        RAISE EXCEPTION 'a generated column accepted a value';
    EXCEPTION WHEN generated_always THEN NULL;
    END;
END
\$\$;
ROLLBACK;
SQL
echo "   ok"

say "as an analyst: every view, every README example"
admin -c "CREATE ROLE $ANALYST LOGIN IN ROLE streampulse_analyst"
# SET ROLE rather than logging in, so this works whatever pg_hba.conf says; the privileges checked
# are the analyst's either way.
as_analyst() { db -c "SET ROLE $ANALYST" -c "SET search_path TO $SCHEMA" "$@"; }
for v in latest_content region_health_latest active_alerts alert_episodes hourly_content; do
    printf '   %-22s %s rows\n' "$v" "$(as_analyst -At -c "SELECT count(*) FROM $v")"
done
awk '/<!-- examples:begin -->/ {on = 1} /<!-- examples:end -->/ {on = 0}
     on && /^```sql$/ {sql = 1; next}  sql && /^```$/ {sql = 0; print ""; next}  sql' \
    "$SQL_DIR/README.md" > "${TMPDIR:-/tmp}/streampulse_examples.$$.sql"
examples=$(grep -c ';$' "${TMPDIR:-/tmp}/streampulse_examples.$$.sql")
as_analyst -f "${TMPDIR:-/tmp}/streampulse_examples.$$.sql"
rm -f "${TMPDIR:-/tmp}/streampulse_examples.$$.sql"
echo "   ran $examples example queries"

say "as an analyst: writes are refused"
for stmt in \
    "INSERT INTO content_stats (window_start, window_end, content_id, title) VALUES (now(), now() + interval '1 minute', 'x', 'X')" \
    "UPDATE alerts SET acknowledged = true" \
    "DELETE FROM event_log" \
    "CREATE TABLE mine (x int)" \
    "SELECT expire_old_rows('1 day')"; do
    if out=$(as_analyst -c "$stmt" 2>&1); then
        echo "analyst could run: $stmt" >&2; exit 1
    fi
    grep -q 'permission denied' <<<"$out" || { echo "unexpected error: $out" >&2; exit 1; }
    echo "   refused: ${stmt%% (*}"
done

say "expire_old_rows"
db <<SQL
-- Called with a different search_path on purpose: the function must still use its own schema.
SET search_path TO public;
DO \$\$
DECLARE
    cutoff   timestamptz := now() - interval '1 day';
    expected bigint;
    got      bigint;
BEGIN
    SELECT (SELECT count(*) FROM $SCHEMA.content_stats WHERE is_final AND window_end < cutoff)
         + (SELECT count(*) FROM $SCHEMA.region_health WHERE is_final AND window_end < cutoff)
         + (SELECT count(*) FROM $SCHEMA.device_stats  WHERE is_final AND window_end < cutoff)
         + (SELECT count(*) FROM $SCHEMA.error_stats   WHERE is_final AND window_end < cutoff)
         + (SELECT count(*) FROM $SCHEMA.window_totals WHERE is_final AND window_end < cutoff)
         + (SELECT count(*) FROM $SCHEMA.trending      WHERE is_final AND window_end < cutoff)
         + (SELECT count(*) FROM $SCHEMA.alerts        WHERE is_final AND window_end < cutoff)
         + (SELECT count(*) FROM $SCHEMA.late_events   WHERE window_end < cutoff)
         + greatest((SELECT count(*) FROM $SCHEMA.event_log) - 10000, 0)
      INTO expected;
    got := $SCHEMA.expire_old_rows('1 day');
    RAISE NOTICE 'expire_old_rows(''1 day'') deleted % rows (expected %)', got, expected;
    ASSERT got = expected AND got > 0;
    ASSERT $SCHEMA.expire_old_rows('1 day') = 0, 'a second run must find nothing';
    ASSERT (SELECT count(*) FROM $SCHEMA.event_log) = 10000;
    ASSERT (SELECT count(*) FROM $SCHEMA.sink_progress) = 3;

    -- Keep nothing: only open rows may survive in the per-window tables.
    PERFORM $SCHEMA.expire_old_rows('0 seconds', 0);
    ASSERT NOT EXISTS (SELECT 1 FROM $SCHEMA.content_stats WHERE is_final);
    ASSERT EXISTS (SELECT 1 FROM $SCHEMA.content_stats WHERE NOT is_final);
    ASSERT NOT EXISTS (SELECT 1 FROM $SCHEMA.event_log);
END
\$\$;
SQL

say "all checks passed"
